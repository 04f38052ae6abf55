"""The metric functions of training_scripts/eval_metrics.py against hand-checked values."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "training_scripts"))
import eval_metrics as m  # noqa: E402


class TestBleu:
    def test_identical_is_100(self):
        assert m.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)

    def test_known_case(self):
        # 1-4 gram precisions 5/6, 3/5, 1/4, 0/3 -> sacrebleu's exp smoothing gives 37.99
        assert m.bleu(["The cat is on the mat"], ["The cat sits on the mat"]) == pytest.approx(37.99, abs=0.01)

    def test_nothing_shared_is_0(self):
        assert m.bleu(["xyz"], ["the cat sat on the mat"]) == pytest.approx(0.0)


class TestRougeL:
    def test_identical_is_1(self):
        assert m.rouge_l(["a b c", "hello there"], ["a b c", "hello there"]) == pytest.approx(1.0)

    def test_known_case(self):
        # LCS "the cat on the mat" = 5 of 6 words each side: P = R = F = 5/6
        assert m.rouge_l(["The cat is on the mat"], ["The cat sits on the mat"]) == pytest.approx(5 / 6)

    def test_mean_over_examples(self):
        assert m.rouge_l(["a b", "c d"], ["a b", "x y"]) == pytest.approx(0.5)


class TestRates:
    def test_exact_match_strips(self):
        assert m.exact_match([" yes\n", "no", "Maybe"], ["yes", "nope", "maybe"]) == pytest.approx(1 / 3)

    def test_json_valid_rate_only_for_json_references(self):
        refs = ['{"a": 1}', "[1, 2]"]
        assert m.json_valid_rate(['{"a": 2}', "not json"], refs) == pytest.approx(0.5)
        assert m.json_valid_rate(["42", '"s"'], refs) == 0.0  # bare scalars are not structured answers
        assert m.json_valid_rate(['{"a": 2}'], ["plain text"]) is None
        assert m.references_are_json(['{"a": 1}', " "]) and not m.references_are_json(["", "x"])

    def test_perplexity(self):
        assert m.perplexity(2 * math.log(4.0), 2) == pytest.approx(4.0)
        assert m.perplexity(0.0, 0) is None and m.perplexity(1e6, 1) == math.inf

    def test_generation_metrics_subset_and_empty(self):
        out = m.generation_metrics(["exact_match", "mean_generated_length"], ["a"], ["a"], [3])
        assert out == {"exact_match": 1.0, "mean_generated_length": 3.0}
        empty = m.generation_metrics(list(m.GENERATION_METRICS), [], [], [])
        assert set(empty.values()) == {None}


class TestImprovement:
    def test_signs(self):
        tuned = {"perplexity": 5.0, "bleu": 30.0, "mean_generated_length": 10.0, "json_valid_rate": None}
        base = {"perplexity": 50.0, "bleu": 10.0, "mean_generated_length": 20.0, "json_valid_rate": None}
        assert m.improvement(tuned, base) == {"perplexity": 45.0, "bleu": 20.0, "mean_generated_length": None,
                                              "json_valid_rate": None}

    def test_probe(self):
        assert m.probe_passed("It is PARIS, of course", ["Paris"]) and not m.probe_passed("London", ["Paris"])
        assert m.probe_score([True, False, True, True]) == {"passed": 3, "total": 4, "score": 0.75}
        assert m.forgetting({"passed": 2}, {"passed": 3}) and not m.forgetting({"passed": 3}, {"passed": 3})
