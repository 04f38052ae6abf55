"""Token statistics with the built-in tiny tokenizer."""

from __future__ import annotations

import io
import json
import statistics
from functools import cache
from typing import Any

import pytest

from app.datasets import tokens


@cache
def tokenizer() -> Any:
    pytest.importorskip("tokenizers")
    from app.training.tiny_model import _build_tokenizer

    return _build_tokenizer()


def canonical(records: list[dict]) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps(r) + "\n" for r in records).encode())


def chat(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def exact_lengths(records: list[dict]) -> list[int]:
    """What training sees: prompting.tokenize_record, without truncation."""
    tok = tokenizer()
    return [len(tokens._prompting().tokenize_record(r, tok, 10**9)[0]) for r in records]


RECORDS = [chat("How do I reset my password?", "Go to the login page " * (i % 7 + 1)) for i in range(40)] + [
    {"text": "The quick brown fox jumps over the lazy dog. " * 3}]


def test_render_matches_prompting_segments() -> None:
    texts = tokens.render_texts(RECORDS[:2], tokenizer())
    assert texts[0] == ("### User:\nHow do I reset my password?\n\n### Assistant:\nGo to the login page </s>")
    assert texts[1].endswith("Go to the login page Go to the login page </s>")


def test_stats_match_the_training_token_counts() -> None:
    stats = tokens.token_stats(canonical(RECORDS), tokenizer(), max_length=40)
    want = exact_lengths(RECORDS)
    assert stats["examples"] == stats["sample_size"] == len(RECORDS) and stats["sampled"] is False
    assert abs(stats["mean"] - statistics.mean(want)) <= 1.0  # joined text vs per-segment tokenizing
    assert abs(stats["max"] - max(want)) <= 2
    assert stats["mean_stderr"] == 0.0 and stats["max_length"] == 40
    over = [i + 1 for i, n in enumerate(want) if n > 40]
    assert stats["over_max_length"] == len(over) > 0
    assert stats["over_max_length_examples"] == over[:10]
    assert stats["p95"] <= stats["max"] and stats["total_tokens"] == stats["sample_tokens"]


def test_large_files_are_sampled_with_a_stated_error() -> None:
    records = [chat("q" * (i % 13 + 1), "answer " * (i % 29 + 1)) for i in range(3000)]
    f = canonical(records)
    size = len(f.getvalue())
    stats = tokens.token_stats(f, tokenizer(), max_length=50, sample_bytes_threshold=size // 10,
                               sample_size=500, batch_size=128)
    full = tokens.token_stats(canonical(records), tokenizer(), max_length=50)
    assert stats["sampled"] is True and stats["sample_size"] == 500 and stats["examples"] == 3000
    assert 0 < stats["mean_stderr"] < 0.05
    assert abs(stats["mean"] - full["mean"]) / full["mean"] < 5 * stats["mean_stderr"] + 0.01
    assert abs(stats["over_max_length"] - full["over_max_length"]) < 0.1 * 3000
    assert stats["over_max_length_examples"] == []


def test_small_file_is_not_sampled_even_above_threshold_when_few_records() -> None:
    f = canonical(RECORDS)
    stats = tokens.token_stats(f, tokenizer(), max_length=512, sample_bytes_threshold=10, sample_size=100)
    assert stats["sampled"] is False and stats["examples"] == len(RECORDS)


def test_empty_file() -> None:
    stats = tokens.token_stats(io.BytesIO(b""), tokenizer(), max_length=10)
    assert stats["examples"] == 0 and stats["mean"] == 0 and stats["max"] == 0
