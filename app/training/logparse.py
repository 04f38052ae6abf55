"""train.py's stdout lines (one JSON object each; the same lines reach CloudWatch on SageMaker)
become metrics, progress and events."""

from __future__ import annotations

import json
from typing import Any

METRIC_KEYS = ("train_loss", "eval_loss", "learning_rate", "tokens_per_second", "grad_norm")


def parse(line: str) -> dict[str, Any] | None:
    line = line.strip()
    start = line.find("{")  # CloudWatch and wrappers may prefix the JSON
    if start < 0:
        return None
    try:
        # NaN and Infinity (which Python's json writes) become null: PostgreSQL's json type refuses
        # them, and one such line would fail every pass that stores the job's progress and events.
        obj = json.loads(line[start:], parse_constant=lambda _: None)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and "event" in obj else None


def metrics_of(obj: dict[str, Any]) -> list[tuple[str, float]]:
    if obj.get("event") not in ("log", "eval", "final"):
        return []
    out = []
    for k in METRIC_KEYS:
        v = obj.get(k)
        if isinstance(v, int | float):
            out.append((k, float(v)))
    return out


def describe_event(obj: dict[str, Any]) -> tuple[str, str, str] | None:
    """(type, level, message) for lines that deserve an event; None for plain metric lines."""
    ev = obj.get("event")
    if ev == "start":
        return ("training_started", "info", f"Training started: {obj.get('total_steps')} steps over "
                f"{obj.get('num_train_examples')} examples on {obj.get('device')}; "
                f"{obj.get('truncated_examples', 0)} examples truncated to max_length")
    if ev == "resume":
        return ("resumed", "info", f"Resumed from the checkpoint at step {obj.get('step')}")
    if ev == "epoch":
        return ("epoch", "info", f"Epoch {obj.get('epoch')} finished at step {obj.get('step')}")
    if ev == "eval":
        return ("evaluation", "info", f"Validation loss {obj.get('eval_loss'):.4f} at step {obj.get('step')}"
                if isinstance(obj.get("eval_loss"), int | float) else "Validation ran")
    if ev == "checkpoint":
        return ("checkpoint", "info", f"Checkpoint saved at step {obj.get('step')}")
    if ev == "early_stop":
        return ("early_stop", "info", f"Early stopping at step {obj.get('step')}; best checkpoint is step "
                f"{obj.get('best_step')} (eval_loss {obj.get('best_eval_loss')})")
    if ev == "end":
        return ("training_finished", "info", f"Training finished at step {obj.get('step')}")
    if ev == "error":
        return ("error", "error", f"{obj.get('code')}: {obj.get('message')}")
    if ev == "warning":
        return ("warning", "warning", str(obj.get("message")))
    return None
