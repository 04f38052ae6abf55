"""Training data: JSONL records in, tokenized examples with labels out, padded per batch.

Records are {"messages": [{"role", "content"}, ...]} or {"text": ...} (rendered by prompting.py).
Labels are -100 on the prompt unless train_on_inputs; examples longer than max_length are
truncated (and counted), examples left without a response token are skipped (and counted).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import prompting
from sm_contract import TrainError

IGNORE_INDEX = -100


def read_split(directory: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All records of every *.jsonl in `directory`, and each file's name, sha256 and record count."""
    records: list[dict[str, Any]] = []
    files = []
    for path in sorted(directory.glob("*.jsonl")) if directory.is_dir() else []:
        data = path.read_bytes()
        before = len(records)
        for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if line.strip():
                records.append(_parse_record(line, f"{path.name} line {lineno}"))
        files.append({"file": path.name, "sha256": hashlib.sha256(data).hexdigest(),
                      "records": len(records) - before})
    return records, files


def _parse_record(line: str, where: str) -> dict[str, Any]:
    try:
        rec = json.loads(line)
    except ValueError as exc:
        raise TrainError("invalid_training_data", f"{where} is not valid JSON ({exc}); fix or remove it") from exc
    messages = rec.get("messages") if isinstance(rec, dict) else None
    ok = isinstance(rec, dict) and (
        isinstance(rec.get("text"), str)
        or (isinstance(messages, list) and messages and all(isinstance(m, dict) and "role" in m for m in messages)))
    if not ok:
        raise TrainError("invalid_training_data",
                         f'{where}: expected {{"messages": [{{"role", "content"}}, ...]}} or {{"text": ...}}')
    return rec


@dataclass
class Tokenized:
    examples: list[dict[str, list[int]]] = field(default_factory=list)
    truncated: int = 0
    skipped_no_response_tokens: int = 0


def tokenize_causal(records: list[dict[str, Any]], tokenizer: Any, cfg: Any) -> Tokenized:
    out = Tokenized()
    for rec in records:
        ids, labels, truncated = prompting.tokenize_record(rec, tokenizer, cfg.max_length, cfg.train_on_inputs)
        out.truncated += truncated
        if all(label == IGNORE_INDEX for label in labels):
            out.skipped_no_response_tokens += 1
            continue
        out.examples.append({"input_ids": ids, "labels": labels})
    return out


def tokenize_seq2seq(records: list[dict[str, Any]], tokenizer: Any, cfg: Any) -> Tokenized:
    """Encoder input: everything before the last response piece; labels: that response piece."""
    out = Tokenized()
    for rec in records:
        pieces = prompting.segments(rec, tokenizer)
        last = max((i for i, (_, is_resp) in enumerate(pieces) if is_resp), default=None)
        if last is None:
            out.skipped_no_response_tokens += 1
            continue
        source = "".join(text for text, _ in pieces[:last])
        enc = tokenizer(source, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
        lab = tokenizer(pieces[last][0], add_special_tokens=False)["input_ids"]
        out.truncated += len(enc) > cfg.max_length or len(lab) > cfg.max_length
        if not lab:
            out.skipped_no_response_tokens += 1
            continue
        out.examples.append({"input_ids": enc[: cfg.max_length], "labels": lab[: cfg.max_length]})
    return out


@dataclass
class Splits:
    train: list[dict[str, list[int]]]
    validation: list[dict[str, list[int]]]
    seq2seq: bool
    counts: dict[str, int]  # examples per split and truncated ones, as the "start" event reports them
    skipped_no_response_tokens: int


def tokenize_splits(train_records: list, val_records: list, tokenizer: Any, cfg: Any, seq2seq: bool,
                    log: Any) -> Splits:
    tok = tokenize_seq2seq if seq2seq else tokenize_causal
    train, val = tok(train_records, tokenizer, cfg), tok(val_records, tokenizer, cfg)
    if not train.examples:
        raise TrainError("no_training_data", f"no training example has response tokens left after truncation "
                         f"to max_length={cfg.max_length}: increase max_length or shorten the prompts")
    if not val_records:
        log("no validation data: no evaluation, no early stopping, eval_steps ignored; the last model is saved")
    elif cfg.save_steps and not cfg.eval_steps:
        log(f"save_steps={cfg.save_steps} without eval_steps: evaluating at every checkpoint to keep the best")
    counts = {"num_train_examples": len(train.examples), "num_validation_examples": len(val.examples),
              "truncated_examples": train.truncated + val.truncated}
    if counts["truncated_examples"]:
        log(f"{counts['truncated_examples']} examples longer than max_length={cfg.max_length} were truncated")
    return Splits(train.examples, val.examples, seq2seq, counts,
                  train.skipped_no_response_tokens + val.skipped_no_response_tokens)


class PadCollator:
    """Dynamic padding to the longest example of the batch (labels padded with -100)."""

    def __init__(self, pad_id: int, seq2seq: bool) -> None:
        self.pad_id, self.seq2seq = pad_id, seq2seq

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        n = max(len(f["input_ids"]) for f in features)
        m = max(len(f["labels"]) for f in features) if self.seq2seq else n
        ids = torch.full((len(features), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), n), dtype=torch.long)
        labels = torch.full((len(features), m), IGNORE_INDEX, dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            ids[i, :k] = torch.tensor(f["input_ids"])
            mask[i, :k] = 1
            labels[i, : len(f["labels"])] = torch.tensor(f["labels"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
