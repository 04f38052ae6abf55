"""A real evaluation: evaluate.py as a local subprocess on a tiny LoRA adapter that learned its data."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.worker import Worker
from tests.evaluation.tiny_adapter import records, train_adapter


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from app.training.tiny_model import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("eval-base"))


@pytest.fixture(scope="module")
def adapter_tar(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model trains faster on one thread, and leaves the other core free
    try:
        return train_adapter(tiny_base, tmp_path_factory.mktemp("eval-adapter"), steps=40)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def base_in_data_dir(settings, tiny_base: Path) -> Path:
    """The catalogue's builtin tiny model resolves to the adapter's own base (no rebuild)."""
    link = settings.data_path / "base_models" / "tiny-llama"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(tiny_base, target_is_directory=True)
    return link


def test_tuned_model_beats_random_base_on_its_validation_data(client, register, user_id, job_with_data, adapter_tar,
                                                              base_in_data_dir, session_factory, store, settings,
                                                              monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    headers = register("alice")
    uid = user_id(headers)
    job_with_data(uid, "llm-tune-alice-tiny-1", tar=adapter_tar, validation=records(6))
    r = client.post("/api/evaluations", headers=headers, json={
        "model": "llm-tune-alice-tiny-1", "max_examples": 6, "generation": {"max_new_tokens": 16}})
    assert r.status_code == 202, r.text
    ev_id = r.json()["id"]
    worker = Worker(session_factory, store, client.app.state.backends, settings)
    deadline = time.monotonic() + 240
    ev = r.json()
    while ev["status"] in ("Pending", "InProgress") and time.monotonic() < deadline:
        worker.tick()
        ev = client.get(f"/api/evaluations/{ev_id}", headers=headers).json()
        time.sleep(0.2)
    assert ev["status"] == "Completed", ev
    res = ev["results"]
    tuned, base = res["tuned"], res["base"]
    assert tuned["perplexity"] < base["perplexity"]
    assert res["improvement"]["perplexity"] > 0
    assert res["improvement"]["perplexity"] == pytest.approx(base["perplexity"] - tuned["perplexity"])
    assert tuned["rouge_l"] > base["rouge_l"] and 0 <= tuned["bleu"] <= 100
    assert res["improvement"]["mean_generated_length"] is None
    assert tuned["json_valid_rate"] is None  # the references are mostly not JSON
    assert 1 <= len(res["samples"]) <= 5
    s = res["samples"][0]
    assert s["prompt"] == "What colour is the sky?" and s["reference"] == "The sky is blue."
    assert isinstance(s["base_output"], str) and isinstance(s["tuned_output"], str)
    gc = res["general_capability"]
    assert gc["tuned"]["total"] == gc["base"]["total"] >= 10 and isinstance(gc["forgetting"], bool)
    assert ev["progress"]["done"] >= 1 and ev["ended_at"]
