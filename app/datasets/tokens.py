"""Token statistics of a canonical training file for one base model's tokenizer.

Each record is rendered exactly as training renders it (training_scripts/prompting.py:
the joined `segments`, i.e. the chat template or the platform's plain template plus EOS,
and a BOS token when the tokenizer adds one) and tokenized in batches with the fast
tokenizer on all cores. Files larger than `sample_bytes_threshold` are measured on a
systematic sample of `sample_size` records, and the report says so and gives the
estimated relative standard error of the mean.
"""

from __future__ import annotations

import importlib.util
import math
import os
import random
from array import array
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

import orjson

_PROMPTING = Path(__file__).resolve().parents[2] / "training_scripts" / "prompting.py"
_module: ModuleType | None = None
MAX_EXAMPLES_LISTED = 10


def _prompting() -> ModuleType:
    """training_scripts/prompting.py, loaded on first use (the app does not import it at start-up)."""
    global _module
    if _module is None:
        spec = importlib.util.spec_from_file_location("llmtuner_prompting", _PROMPTING)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {_PROMPTING}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _module = module
    return _module


def render_texts(records: list[dict[str, Any]], tokenizer: Any) -> list[str]:
    """The full training string of each canonical record."""
    segments = _prompting().segments
    if getattr(tokenizer, "chat_template", None):
        eos = getattr(tokenizer, "eos_token", None) or ""
        # One rendering per record: the segments of a chat template join to exactly this.
        return [tokenizer.apply_chat_template(r["messages"], tokenize=False) if "messages" in r
                else str(r["text"]) + eos for r in records]
    return ["".join([t for t, _ in segments(r, tokenizer)]) for r in records]


def _counter(tokenizer: Any) -> Any:
    """A function texts -> token counts: one batched call of the tokenizer itself.

    (Calling the Rust backend's encode_batch directly instead was slower.)
    """
    return lambda texts: [len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _count_lines(f: BinaryIO) -> int:
    n = 0
    last = b"\n"
    while chunk := f.read(1 << 22):
        n += chunk.count(b"\n")
        last = chunk[-1:]
    return n + (last != b"\n")


def _file_size(f: BinaryIO) -> int | None:
    """Bytes from the current position to the end, when the stream can tell."""
    try:
        if f.seekable():
            here = f.tell()
            end = f.seek(0, os.SEEK_END)
            f.seek(here)
            return end - here
    except (AttributeError, OSError, ValueError):
        pass
    return None


def sample_lines(canonical: BinaryIO, file_size: int | None, sample_bytes_threshold: int,
                 sample_size: int, seed: int = 0) -> tuple[Any, int | None, bool]:
    """(lines to measure, total records if known, sampled?) — systematic sample of large files."""
    if file_size is None:
        file_size = _file_size(canonical)
    if file_size is None or file_size <= sample_bytes_threshold or not canonical.seekable():
        return canonical, None, False
    start = canonical.tell()
    total = _count_lines(canonical)
    canonical.seek(start)
    if total <= sample_size:
        return canonical, total, False
    step = total / sample_size
    offset = random.Random(seed).random() * step
    picks = iter([int(offset + k * step) for k in range(sample_size)] + [-1])

    def lines() -> Any:
        nxt = next(picks)
        for i, line in enumerate(canonical):
            if i == nxt:
                yield line
                nxt = next(picks)
                if nxt < 0:
                    return

    return lines(), total, True


def token_stats(canonical: BinaryIO, tokenizer: Any, max_length: int,
                sample_bytes_threshold: int = 50 * 2**20, file_size: int | None = None,
                sample_size: int = 20_000, batch_size: int = 1000) -> dict[str, Any]:
    """Tokens per example (mean, p95, max), how many exceed `max_length`, and whether sampled.

    Keys: examples, sampled, sample_size, sample_tokens, total_tokens (estimated when sampled),
    mean, p95, max, over_max_length (estimated when sampled), over_max_length_fraction,
    over_max_length_examples (1-based record numbers in the canonical file, when not sampled),
    max_length, mean_stderr (relative standard error of the mean; 0.0 when not sampled).
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    lines, total, sampled = sample_lines(canonical, file_size, sample_bytes_threshold, sample_size)
    count = _counter(tokenizer)
    bos = int(getattr(tokenizer, "bos_token_id", None) is not None
              and bool(getattr(tokenizer, "add_bos_token", False))
              and not getattr(tokenizer, "chat_template", None))
    lengths = array("I")
    over: list[int] = []
    batch: list[dict[str, Any]] = []
    for line in lines:
        if line.strip():
            batch.append(orjson.loads(line))
        if len(batch) >= batch_size:
            _measure(batch, tokenizer, count, bos, lengths, over, max_length)
            batch = []
    if batch:
        _measure(batch, tokenizer, count, bos, lengths, over, max_length)
    return _summary(lengths, total if sampled else len(lengths), sampled, over, max_length)


def _measure(batch: list[dict[str, Any]], tokenizer: Any, count: Any, bos: int, lengths: array[int],
             over: list[int], max_length: int) -> None:
    base = len(lengths)
    for i, n in enumerate(count(render_texts(batch, tokenizer))):
        n += bos
        lengths.append(n)
        if n > max_length and len(over) < MAX_EXAMPLES_LISTED:
            over.append(base + i + 1)


def _summary(lengths: array[int], examples: int | None, sampled: bool, over: list[int],
             max_length: int) -> dict[str, Any]:
    n = len(lengths)
    examples = examples or n
    s = sorted(lengths)
    total = sum(s)
    mean = total / n if n else 0.0
    n_over = sum(1 for x in s if x > max_length)
    stderr = 0.0
    if sampled and n > 1 and mean > 0:
        var = sum((x - mean) ** 2 for x in s) / (n - 1)
        stderr = math.sqrt(var / n * (1 - n / examples)) / mean
    frac = n_over / n if n else 0.0
    return {
        "examples": examples,
        "sampled": sampled,
        "sample_size": n,
        "sample_tokens": total,
        "total_tokens": round(mean * examples) if sampled else total,
        "mean": round(mean, 2),
        "p95": s[min(n - 1, math.ceil(0.95 * n) - 1)] if n else 0,
        "max": s[-1] if n else 0,
        "max_length": max_length,
        "over_max_length": round(frac * examples) if sampled else n_over,
        "over_max_length_fraction": round(frac, 6),
        "over_max_length_examples": [] if sampled else over,
        "mean_stderr": round(stderr, 6),
    }
