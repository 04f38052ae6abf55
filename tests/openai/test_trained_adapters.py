"""Two adapters trained for real (train.py on the tiny model) from different data, served by one
base-model endpoint: the same question asked of each, at the same time, gets each one's answer."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import own_database
from tests.e2e.conftest import QA, wait_for, worker  # noqa: F401 - fixtures
from tests.jobs import TINY_ID

FAST = {"epochs": 2, "batch_size": 4, "learning_rate": 5e-3, "logging_steps": 5, "max_length": 64}
ANSWERS = {"support": [a for _, a in QA], "legal": ["Please contact our legal team in writing.",
                                                    "Our lawyers answer within ten working days.",
                                                    "See clause 12 of the service agreement."]}


@pytest.fixture
def session_factory(tmp_path: Path) -> Iterator[Any]:
    """Its own database: the two questions asked at once look their endpoint up in two threads at once."""
    yield from own_database(tmp_path)


def trained_job(client: Any, h: dict[str, str], name: str, wait: Callable[..., Any]) -> str:
    rows = "\n".join(json.dumps({"prompt": QA[i % 3][0], "response": ANSWERS[name][i % 3]}) for i in range(30))
    r = client.post("/api/datasets", headers=h, files={"file": (f"{name}.jsonl", rows.encode())})
    assert r.status_code == 201, r.text
    r = client.post("/api/training-job", headers=h, json={"dataset_id": r.json()["id"], "hyperparameters": FAST})
    assert r.status_code == 201, r.text
    job = r.json()["job_name"]
    done = wait(lambda: (s := client.get(f"/api/training-job/{job}", headers=h).json())["status"] in
                ("Completed", "Failed") and s, what=f"{name} training", timeout=600)
    assert done["status"] == "Completed", done
    return str(job)


def test_adapters_trained_on_different_data_answer_differently_in_one_batch(
        client: Any, register: Callable[..., dict[str, str]], wait_for: Callable[..., Any],  # noqa: F811
        base_in_data_dir: Any, live_url: str) -> None:
    h = register("alice")
    jobs = {name: trained_job(client, h, name, wait_for) for name in ANSWERS}
    r = client.post("/api/deploy-model", headers=h, json={
        "model_name": "helpdesk", "base_model": TINY_ID, "instance_type": "local",
        "adapters": [{"job_name": job, "name": name} for name, job in jobs.items()]})
    assert r.status_code == 202, r.text
    wait_for(lambda: client.get("/api/endpoint-status/helpdesk-endpoint", headers=h).json()["status"] == "InService",
             what="InService")
    key = client.post("/api/api-keys", headers=h, json={"name": "t"}).json()["key"]
    oai = openai.OpenAI(base_url=f"{live_url}/v1", api_key=key, max_retries=0)
    question = [{"role": "user", "content": QA[0][0]}]
    answers: dict[str, str] = {}
    barrier = threading.Barrier(len(jobs))

    def ask(name: str) -> None:
        barrier.wait()  # both requests arrive together and share a batch
        r = oai.chat.completions.create(model=name, messages=question, max_tokens=16, temperature=0)
        answers[name] = r.choices[0].message.content or ""

    threads = [threading.Thread(target=ask, args=(n,)) for n in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert answers["support"] != answers["legal"], answers  # each adapter its own answer, in one batch
    for name in jobs:  # and the answer each gives alone
        alone = oai.chat.completions.create(model=name, messages=question, max_tokens=16, temperature=0)
        assert alone.choices[0].message.content == answers[name]
