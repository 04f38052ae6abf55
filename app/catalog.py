"""The base-model catalogue and the instance-type price table (packaged data, editable by settings)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from app.config import Settings
from app.errors import NotFound, ValidationFailed

DATA = Path(__file__).parent / "data"
BUILTIN_PREFIX = "builtin:"  # a catalogue `source` naming a built-in tiny model (app/training/tiny_model.py)


@lru_cache
def _packaged_models() -> list[dict[str, Any]]:
    return list(json.loads((DATA / "base_models.json").read_text()))


@lru_cache
def _packaged_instances() -> dict[str, dict[str, Any]]:
    return dict(json.loads((DATA / "instance_types.json").read_text())["types"])


def base_models(settings: Settings) -> list[dict[str, Any]]:
    out = [dict(m) for m in _packaged_models()]
    for extra in settings.extra_base_models:
        entry: dict[str, Any] = {"family": "custom", "parameters": None, "task": "causal_lm", "max_length": 2048,
                 "default_target_modules": None, "recommended_instance_types": ["ml.g5.xlarge"],
                 "offline": str(extra.get("source", "")).startswith(("/", "s3://")), "description": ""}
        entry.update(extra)
        entry.setdefault("source", entry["id"])
        out = [m for m in out if m["id"] != entry["id"]] + [entry]
    return out


def base_model(settings: Settings, model_id: str, param: str = "base_model") -> dict[str, Any]:
    for m in base_models(settings):
        if m["id"] == model_id:
            return m
    known = ", ".join(m["id"] for m in base_models(settings))
    raise ValidationFailed(f"Unknown base model {model_id!r}; choose one of: {known}", param=param,
                           code="unknown_base_model")


def resolve_source(settings: Settings, entry: dict[str, Any]) -> str:
    """Where the weights come from: a local directory, a hub id or an s3:// prefix."""
    src = str(entry["source"])
    if src.startswith(BUILTIN_PREFIX):
        # torch and transformers: imported only where a built-in model is used (the `local` extra).
        from app.training.tiny_model import ensure_tiny_model

        return str(ensure_tiny_model(settings.data_path, family=src[len(BUILTIN_PREFIX):]))
    return src


def prepare_builtin_models(settings: Settings) -> None:
    """Build the built-in tiny models under the data dir if they are missing. The worker calls this
    as it starts, so that no request waits for them to be written."""
    if settings.backend != "local":
        return
    for entry in base_models(settings):
        if str(entry["source"]).startswith(BUILTIN_PREFIX):
            resolve_source(settings, entry)


def instance_types(settings: Settings) -> dict[str, dict[str, Any]]:
    out = {k: dict(v) for k, v in _packaged_instances().items()}
    for name, prices in settings.instance_prices.items():
        out.setdefault(name, {"accelerator": "unknown", "gpus": 0, "gpu_memory_gib": 0, "peak_tflops": 1.0,
                              "startup_seconds": 180, "backends": ["local", "sagemaker"]})
        out[name].update(prices)
    return out


def instance_type(settings: Settings, name: str, purpose: str, param: str = "instance_type") -> dict[str, Any]:
    types = instance_types(settings)
    it = types.get(name)
    if it is None or settings.backend not in it["backends"] or it.get(purpose) is None:
        usable = ", ".join(k for k, v in types.items() if settings.backend in v["backends"]
                           and v.get(purpose) is not None)
        raise ValidationFailed(f"Instance type {name!r} is not offered for {purpose} on the "
                               f"{settings.backend} backend; choose one of: {usable}", param=param,
                               code="unknown_instance_type")
    return {"name": name, **it}


def require_owned(obj: Any, user_id: str, what: str, ident: str, param: str | None = None) -> Any:
    if obj is None or getattr(obj, "user_id", None) != user_id:
        raise NotFound(f"No {what} {ident!r}", param=param)
    return obj
