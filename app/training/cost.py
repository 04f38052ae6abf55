"""Cost: estimated before a job (tokens x epochs over a per-instance throughput model) and actual
after (billable seconds x price)."""

from __future__ import annotations

from typing import Any

from app.training.schemas import Hyperparameters

# Share of an accelerator's peak a LoRA fine-tune reaches end to end (assumption, see README).
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
    params = float(model.get("parameters") or 1e9)
    # Forward 2N + backward through activations 2N; full fine-tuning also computes weight grads (+2N).
    flops_per_token = (4 if hp.use_lora else 6) * params
    mfu = MFU_GPU if instance.get("gpus") else MFU_CPU
    effective = float(instance["peak_tflops"]) * 1e12 * mfu
    eval_tokens = tokens - train_tokens
    compute_s = (train_tokens * hp.epochs * flops_per_token + eval_tokens * hp.epochs * 2 * params) / effective
    if hp.max_steps:
        per_step = hp.batch_size * hp.gradient_accumulation_steps * (train_tokens / max(1, report.get(
            "valid_examples") or 1))
        compute_s = min(compute_s, hp.max_steps * per_step * flops_per_token / effective)
    seconds = int(compute_s + float(instance["startup_seconds"]))
    return {
        "estimated_tokens": train_tokens * hp.epochs,
        "estimated_seconds": seconds,
        "estimated_cost": round(seconds / 3600 * price_per_hour, 4),
        "currency": "USD",
        "instance_type": instance["name"],
        "price_per_hour": price_per_hour,
        "assumptions": {
            "tokens_from": token_source,
            "training_tokens_per_epoch": train_tokens,
            "epochs": hp.epochs,
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
