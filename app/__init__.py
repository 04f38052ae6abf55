"""LLM Tuner: a fine-tuning platform as a REST service."""

__version__ = "0.1.0"
