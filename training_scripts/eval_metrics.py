"""Evaluation metrics, importable without app/ (evaluate.py runs in a SageMaker container too).

N-gram metrics come from the well-kept libraries: BLEU from sacrebleu (corpus BLEU, 0-100),
ROUGE-L from rouge-score (mean F-measure, 0-1). The rest are simple rates and means.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

ALL_METRICS = ("perplexity", "bleu", "rouge_l", "exact_match", "json_valid_rate", "mean_generated_length")
GENERATION_METRICS = ("bleu", "rouge_l", "exact_match", "json_valid_rate", "mean_generated_length")
# Where a lower value is the better one (improvement = base - tuned for these).
LOWER_IS_BETTER = frozenset({"perplexity"})
# Metrics with no "better" direction get no improvement figure.
NO_DIRECTION = frozenset({"mean_generated_length"})


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu corpus BLEU (0-100) of predictions against one reference each."""
    import sacrebleu

    if not predictions:
        raise ValueError("bleu needs at least one prediction")
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (0-1), rouge-score's default tokenizer (lower-cased words)."""
    from rouge_score import rouge_scorer

    if not predictions:
        raise ValueError("rouge_l needs at least one prediction")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references, strict=True)]
    return float(sum(scores) / len(scores))


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share (0-1) of predictions equal to their reference after stripping surrounding whitespace."""
    if not predictions:
        raise ValueError("exact_match needs at least one prediction")
    hits = sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True))
    return hits / len(predictions)


def is_json_document(text: str) -> bool:
    """A JSON object or array (a bare number or string is not a structured answer)."""
    try:
        return isinstance(json.loads(text.strip()), dict | list)
    except ValueError:
        return False


def references_are_json(references: Sequence[str]) -> bool:
    """True when every non-empty reference is a JSON object or array (the format-compliance check)."""
    filled = [r for r in references if r.strip()]
    return bool(filled) and all(is_json_document(r) for r in filled)


def json_valid_rate(predictions: Sequence[str], references: Sequence[str]) -> float | None:
    """Share of outputs that are a JSON object/array, when the references are JSON; else None."""
    if not predictions or not references_are_json(references):
        return None
    return sum(is_json_document(p) for p in predictions) / len(predictions)


def mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def perplexity(total_nll: float, n_tokens: int) -> float | None:
    """exp of the mean token negative log-likelihood; None without tokens, inf on overflow."""
    if n_tokens <= 0:
        return None
    avg = total_nll / n_tokens
    return math.exp(avg) if avg < 700 else math.inf


def generation_metrics(wanted: Sequence[str], predictions: Sequence[str], references: Sequence[str],
                       lengths: Sequence[int]) -> dict[str, float | None]:
    """The requested generation metrics; each None when there was nothing to score."""
    out: dict[str, float | None] = {}
    have = bool(predictions)
    for name in wanted:
        if name == "bleu":
            out[name] = bleu(predictions, references) if have else None
        elif name == "rouge_l":
            out[name] = rouge_l(predictions, references) if have else None
        elif name == "exact_match":
            out[name] = exact_match(predictions, references) if have else None
        elif name == "json_valid_rate":
            out[name] = json_valid_rate(predictions, references)
        elif name == "mean_generated_length":
            out[name] = mean([float(n) for n in lengths])
    return out


def improvement(tuned: dict[str, Any], base: dict[str, Any]) -> dict[str, float | None]:
    """Per metric, positive = the tuned model is better: tuned - base, or base - tuned for perplexity.

    None where either side is missing or not finite, and for metrics with no better direction.
    """
    out: dict[str, float | None] = {}
    for name, t in tuned.items():
        b = base.get(name)
        ok = isinstance(t, int | float) and isinstance(b, int | float) and math.isfinite(t) and math.isfinite(b)
        if name in NO_DIRECTION or not ok:
            out[name] = None
        else:
            out[name] = float(b - t) if name in LOWER_IS_BETTER else float(t - b)
    return out


def probe_passed(output: str, expected: Sequence[str]) -> bool:
    """A probe answer passes when it contains any expected substring (case-insensitive)."""
    low = output.lower()
    return any(e.lower() in low for e in expected)


def probe_score(passed: Sequence[bool]) -> dict[str, Any]:
    n = len(passed)
    k = sum(bool(p) for p in passed)
    return {"passed": k, "total": n, "score": (k / n) if n else None}


def forgetting(tuned: dict[str, Any], base: dict[str, Any]) -> bool:
    """The tuned model answers fewer general-capability probes than its base did."""
    return int(tuned.get("passed") or 0) < int(base.get("passed") or 0)
