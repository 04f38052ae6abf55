"""Cost: estimated before a job (tokens x epochs over a per-instance throughput model) and actual
after (billable seconds x price)."""

from __future__ import annotations

import math
from typing import Any

from app.training.schemas import Hyperparameters

# Share of an accelerator's peak a LoRA fine-tune reaches end to end (an assumption, documented in docs/training.md).
MFU_GPU = 0.35
MFU_CPU = 0.5
CHARS_PER_TOKEN = 4.0


def dataset_tokens(report: dict[str, Any], max_length: int) -> tuple[int, str]:
    """Tokens in the whole dataset, from token statistics when the upload had them, else chars/4."""
    n = int(report.get("valid_examples") or 0)
    stats = report.get("token_stats") or {}
    if stats.get("mean"):
        return int(min(float(stats["mean"]), max_length) * n), "token statistics of the dataset report"
    chars = float(report.get("avg_prompt_length") or 0) + float(report.get("avg_response_length") or 0)
    return int(min(chars / CHARS_PER_TOKEN, max_length) * n), f"{CHARS_PER_TOKEN:g} characters per token"


def estimate(report: dict[str, Any], model: dict[str, Any], hp: Hyperparameters, instance: dict[str, Any],
             price_per_hour: float, validation_split: float) -> dict[str, Any]:
    tokens, token_source = dataset_tokens(report, hp.max_length)
    train_tokens = int(tokens * (1 - validation_split))
    eval_tokens = tokens - train_tokens
    per_example = tokens / max(1, int(report.get("valid_examples") or 1))
    # Tokens trained: every epoch over the training split, or max_steps batches when that ends sooner.
    trained = train_tokens * hp.epochs
    if hp.max_steps:
        trained = min(trained, int(hp.max_steps * hp.batch_size * hp.gradient_accumulation_steps * per_example))
    # Validation runs after each epoch that is (at least partly) trained.
    eval_passes = min(hp.epochs, math.ceil(trained / train_tokens)) if train_tokens else 0
    params = float(model.get("parameters") or 1e9)
    # Forward 2N + backward through activations 2N; full fine-tuning also computes weight grads (+2N).
    flops_per_token = (4 if hp.use_lora else 6) * params
    mfu = MFU_GPU if instance.get("gpus") else MFU_CPU
    effective = float(instance["peak_tflops"]) * 1e12 * mfu
    compute_s = (trained * flops_per_token + eval_tokens * eval_passes * 2 * params) / effective
    seconds = int(compute_s + float(instance["startup_seconds"]))
    return {
        "estimated_tokens": trained,
        "estimated_seconds": seconds,
        "estimated_cost": round(seconds / 3600 * price_per_hour, 4),
        "currency": "USD",
        "instance_type": instance["name"],
        "price_per_hour": price_per_hour,
        "assumptions": {
            "tokens_from": token_source,
            "training_tokens_per_epoch": train_tokens,
            "validation_tokens_per_pass": eval_tokens,
            "validation_passes": eval_passes,
            "epochs": hp.epochs,
            "max_steps": hp.max_steps,
            "model_parameters": int(params),
            "flops_per_token": flops_per_token,
            "instance_peak_tflops": instance["peak_tflops"],
            "model_flops_utilisation": mfu,
            "startup_seconds": instance["startup_seconds"],
            "billing": "per second of the job's billable time at the instance's hourly price",
        },
    }


def actual(billable_seconds: int, price_per_hour: float) -> float:
    return round(billable_seconds / 3600 * price_per_hour, 4)
