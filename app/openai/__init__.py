"""An OpenAI-compatible API under /v1 (models, chat completions, completions, streaming)."""
