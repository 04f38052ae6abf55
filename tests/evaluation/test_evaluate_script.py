"""evaluate.py's contract where it fails early: a coded reason in SM_OUTPUT_DIR/failure, exit 1."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "training_scripts"))
import evaluate  # noqa: E402


@pytest.fixture
def sm_env(tmp_path, monkeypatch):
    def _env(hps: dict, data: list[str] | None = None) -> Path:
        train = tmp_path / "train"
        train.mkdir(exist_ok=True)
        if data is not None:
            (train / "v.jsonl").write_text("".join(line + "\n" for line in data))
        for k, v in {"SM_HPS": json.dumps(hps), "SM_CHANNEL_TRAIN": str(train),
                     "SM_CHANNEL_MODEL": str(tmp_path / "model"), "SM_MODEL_DIR": str(tmp_path / "out"),
                     "SM_OUTPUT_DIR": str(tmp_path / "output")}.items():
            monkeypatch.setenv(k, v)
        return tmp_path / "output" / "failure"

    return _env


def test_invalid_hyperparameters_are_all_reported(sm_env, capsys):
    failure = sm_env({"metrics": ["accuracy"], "max_examples": 0, "generation": {"top_p": 7}}, ['{"text": "x"}'])
    assert evaluate.main() == 1
    text = failure.read_text()
    assert text.startswith("invalid_hyperparameters: ")
    assert "metrics" in text and "max_examples" in text and "generation.top_p" in text
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["event"] == "error" and last["code"] == "invalid_hyperparameters"


def test_no_records_is_no_evaluation_data(sm_env):
    failure = sm_env({}, [])
    assert evaluate.main() == 1
    assert failure.read_text().startswith("no_evaluation_data: ")


def test_string_hyperparameters_are_json_decoded(monkeypatch):
    monkeypatch.setenv("SM_HPS", json.dumps({"metrics": '["bleu"]', "max_examples": "5", "compare_with_base": "false",
                                             "sagemaker_program": "evaluate.py"}))
    cfg = evaluate.EvalConfig.from_hyperparameters(evaluate.read_hyperparameters({"SM_HPS": os.environ["SM_HPS"]}))
    assert cfg.metrics == ["bleu"] and cfg.max_examples == 5 and cfg.compare_with_base is False
    assert cfg.generation.do_sample is False  # greedy unless sampling is asked for
