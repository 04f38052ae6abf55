"""The evaluation metrics users can ask for. The computations live in training_scripts/eval_metrics.py
(they run beside the model, in the evaluation job); this is their catalogue for the API."""

from __future__ import annotations

from typing import Any

METRICS: dict[str, dict[str, Any]] = {
    "perplexity": {
        "description": "exp of the mean negative log-likelihood of the reference response tokens (teacher-forced; "
                       "prompt tokens excluded)", "range": "1..inf", "higher_is_better": False},
    "bleu": {"description": "sacrebleu corpus BLEU of the generated answers against the references",
             "range": "0..100", "higher_is_better": True},
    "rouge_l": {"description": "mean ROUGE-L F-measure (rouge-score) of the generated answers",
                "range": "0..1", "higher_is_better": True},
    "exact_match": {"description": "share of answers equal to the reference after stripping whitespace",
                    "range": "0..1", "higher_is_better": True},
    "json_valid_rate": {"description": "share of answers that are a JSON object or array; null unless the "
                                       "references are JSON (format compliance)",
                        "range": "0..1", "higher_is_better": True},
    "mean_generated_length": {"description": "mean number of generated tokens per answer (no better direction: "
                                             "its improvement is null)", "range": "0..max_new_tokens",
                              "higher_is_better": None},
}
ALL_METRICS: list[str] = list(METRICS)


def catalogue() -> list[dict[str, Any]]:
    return [{"name": k, **v} for k, v in METRICS.items()]
