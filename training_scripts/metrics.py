"""Metric events: one JSON object a line on stdout (flushed) and appended to metrics.jsonl.

Events: start, log, eval, epoch, checkpoint, resume, early_stop, end, error. The platform parses
them from the job's log (SageMaker metric definitions, the local backend's reader), so their keys
and order are a contract.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from sm_contract import TrainError


class Events:
    """Writes metric lines to `stdout` (the real one: train.py sends every other print to stderr)."""

    def __init__(self, path: Path, stdout: TextIO) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives for the whole run
        self._stdout = stdout

    def emit(self, event: str, **fields: Any) -> None:
        clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in fields.items()}
        line = json.dumps({"event": event, **clean})
        for out in (self._stdout, self._file):
            out.write(line + "\n")
            out.flush()


def emit_error(events: Events | None, stdout: TextIO, code: str, message: str) -> None:
    """The error event, also when the failure came before the metrics file could be opened."""
    if events is not None:
        events.emit("error", code=code, message=message)
    else:
        stdout.write(json.dumps({"event": "error", "code": code, "message": message}) + "\n")
        stdout.flush()


def rounded(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(float(x), digits)


def make_callback(events: Events, epochs: int, counts: dict[str, int], device: str) -> Any:
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        """Turns Trainer events into metric lines; times optimizer steps; fails fast on a nan loss."""

        def __init__(self) -> None:
            self.train_seconds, self.tokens_at_log, self.seconds_at_log = 0.0, 0, 0.0
            self.step_started = 0.0
            self.resumed_from: int | None = None
            self.tokens_at_start = 0
            self.first_step: tuple[float, int] | None = None  # (seconds, tokens) of this session's first step

        def on_train_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            self.tokens_at_log = self.tokens_at_start = state.num_input_tokens_seen
            events.emit("start", total_steps=state.max_steps, **counts, epochs=epochs, device=device)
            if state.global_step > 0:
                self.resumed_from = state.global_step
                events.emit("resume", step=state.global_step)

        def on_step_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            self.step_started = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            self.train_seconds += time.perf_counter() - self.step_started
            if self.first_step is None:
                self.first_step = (self.train_seconds, state.num_input_tokens_seen - self.tokens_at_start)
            if state.global_step >= state.max_steps and args.eval_strategy == "steps":
                control.should_evaluate = True  # always evaluate (and checkpoint) at the last step
                control.should_save = True

        def on_log(self, args, state, control, logs=None, **kw):  # type: ignore[no-untyped-def]
            logs = logs or {}
            if "loss" in logs:
                self._train_log(state, logs)
            elif "eval_loss" in logs:
                events.emit("eval", step=state.global_step, epoch=rounded(state.epoch),
                            eval_loss=rounded(logs["eval_loss"]))

        def _train_log(self, state: Any, logs: dict[str, float]) -> None:
            loss = float(logs["loss"])
            if not math.isfinite(loss):
                raise TrainError("training_diverged", f"the training loss became {loss} at step "
                                 f"{state.global_step}: lower learning_rate or set max_grad_norm (e.g. 1.0)")
            tokens = state.num_input_tokens_seen - self.tokens_at_log
            secs = self.train_seconds - self.seconds_at_log
            self.tokens_at_log, self.seconds_at_log = state.num_input_tokens_seen, self.train_seconds
            line: dict[str, Any] = {"step": state.global_step, "epoch": rounded(state.epoch),
                                    "train_loss": rounded(loss), "learning_rate": logs.get("learning_rate"),
                                    "tokens_per_second": round(tokens / secs, 1) if secs > 0 else 0.0}
            if logs.get("grad_norm") is not None:
                line["grad_norm"] = rounded(float(logs["grad_norm"]))
            events.emit("log", **line)

        def on_epoch_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            if state.epoch is not None and abs(state.epoch - round(state.epoch)) < 1e-6:
                events.emit("epoch", step=state.global_step, epoch=int(round(state.epoch)))

        def on_save(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            events.emit("checkpoint", step=state.global_step, path=f"checkpoint-{state.global_step}")

        def throughput(self, state: Any) -> dict[str, float | None]:
            """Non-padding tokens per second of this session's optimizer steps (eval and saving excluded)."""
            return step_throughput(state.num_input_tokens_seen - self.tokens_at_start, self.train_seconds,
                                   self.first_step)

    return MetricsCallback()


def step_throughput(tokens: int, seconds: float, first_step: tuple[float, int] | None) -> dict[str, float | None]:
    """`tokens` over `seconds` of optimizer steps, and the same after the first step (`first_step`: its
    seconds and tokens), which also pays for the first touch of the activation memory (the longest
    batch comes first). bench/train_throughput.py measures its other runs with this too."""
    out: dict[str, float | None] = {"non_padding_tokens": tokens, "train_step_seconds": round(seconds, 3),
                                    "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else 0.0}
    if first_step is not None:
        first_secs, first_tokens = first_step
        rest = seconds - first_secs
        out |= {"first_step_seconds": round(first_secs, 3), "first_step_tokens": first_tokens,
                "tokens_per_second_after_first_step": round((tokens - first_tokens) / rest, 1)
                if rest > 0 and tokens > first_tokens else None}
    return out


def log(msg: str) -> None:
    print(f"[train] {msg}", file=sys.stderr, flush=True)
