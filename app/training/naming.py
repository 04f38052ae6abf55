"""Job names: llm-tune-{username}-{model}-{YYYYMMDD-HHMMSS}, within SageMaker's
63-character rule (letters, digits and hyphens)."""

from __future__ import annotations

import re
from datetime import datetime

MAX = 63


def slug(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-") or "x"


def job_name(username: str, base_model: str, at: datetime, suffix: str = "") -> str:
    stamp = at.strftime("%Y%m%d-%H%M%S") + (f"-{suffix}" if suffix else "")
    user, model = slug(username), slug(base_model.rsplit("/", 1)[-1])
    room = MAX - len("llm-tune-") - len(stamp) - 2
    if len(user) + len(model) > room:  # cut the longer part first, keep both readable
        keep_user = min(len(user), max(room // 2, room - len(model)))
        user, model = user[:keep_user].strip("-"), model[: room - keep_user].strip("-")
    name = f"llm-tune-{user}-{model}-{stamp}"
    assert len(name) <= MAX and re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*", name), name
    return name
