"""SageMaker MetricDefinitions for train.py's stdout, and helpers to read its log lines.

train.py prints one JSON object a line (`json.dumps`, so `"key": value` with one space and the
"event" key first), e.g.

    {"event": "log", "step": 10, "epoch": 0.5, "train_loss": 1.23, "learning_rate": 0.0001,
     "tokens_per_second": 812.5, "grad_norm": 0.7}
    {"event": "eval", "step": 10, "epoch": 0.5, "eval_loss": 1.1}

SageMaker applies each regex to every line the container writes to CloudWatch and keeps the first
capture group as the metric's value (shown in the console, sent to CloudWatch metrics, and the last
value of each lands in `FinalMetricDataList`). Each regex is tied to its event so that the summary
line (`"event": "end"`, whose train_loss is the run's average) does not pass for a step's value.
The same regexes are applied here with Python's `re` by `metric_values`, which the tests run on
real sample lines.
"""

from __future__ import annotations

import json
import re
from typing import Any

# A JSON number as json.dumps writes it (1.23, 0.0001, 1e-05, -2.5E+03; no NaN/Infinity: train.py
# stops on a non-finite loss). One capture group and no (?:...) so any regex engine reads it alike.
_NUMBER = r"([-+]?[0-9.]+[eE]?[-+]?[0-9]*)"


def _rule(event: str, key: str) -> str:
    return rf'"event": "{event}",.*"{key}": {_NUMBER}'


METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": "train_loss", "Regex": _rule("log", "train_loss")},
    {"Name": "learning_rate", "Regex": _rule("log", "learning_rate")},
    {"Name": "tokens_per_second", "Regex": _rule("log", "tokens_per_second")},
    {"Name": "grad_norm", "Regex": _rule("log", "grad_norm")},
    {"Name": "epoch", "Regex": _rule("log", "epoch")},
    {"Name": "eval_loss", "Regex": _rule("eval", "eval_loss")},
]

_COMPILED = [(d["Name"], re.compile(d["Regex"])) for d in METRIC_DEFINITIONS]


def metric_values(line: str) -> dict[str, float]:
    """What SageMaker's MetricDefinitions read from one log line."""
    out: dict[str, float] = {}
    for name, rx in _COMPILED:
        m = rx.search(line)
        if m:
            out[name] = float(m.group(1))
    return out


def event_lines(message: str) -> list[str]:
    """The lines of a CloudWatch message that are train.py events (JSON objects with an "event" key).

    The container's log also holds the training toolkit's own output and train.py's stderr; those
    lines are left out, so the caller sees what the local backend reads from train.py's stdout.
    """
    out = []
    for raw in message.splitlines():
        line = raw.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("event"), str):
            out.append(line)
    return out


def final_metrics_line(final_metric_data_list: list[dict[str, Any]] | None) -> str | None:
    """`FinalMetricDataList` as one synthetic event line: {"event": "final", "<metric>": value, ...}."""
    metrics = {str(m["MetricName"]): float(m["Value"]) for m in final_metric_data_list or []
               if "MetricName" in m and "Value" in m}
    if not metrics:
        return None
    return json.dumps({"event": "final", **metrics})
