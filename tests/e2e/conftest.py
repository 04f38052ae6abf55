from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from app.worker import Worker

QA = [("How do I reset my password?", "Click Forgot Password on the login page."),
      ("What are your business hours?", "Monday to Friday, 9 AM to 6 PM."),
      ("How do I cancel my subscription?", "Open Account Settings and choose Cancel.")]


def qa_jsonl(n: int = 30) -> bytes:
    return "\n".join(json.dumps({"prompt": QA[i % 3][0], "response": QA[i % 3][1]}) for i in range(n)).encode()


@pytest.fixture
def worker(app: Any, settings: Any, session_factory: Any, client: Any) -> Worker:
    return Worker(session_factory, app.state.store, app.state.backends, settings)


@pytest.fixture
def wait_for(worker: Worker) -> Callable[..., Any]:
    """Tick the worker until `check()` returns a truthy value or the deadline passes."""

    def _wait(check: Callable[[], Any], timeout: float = 180, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            worker.tick()
            got = check()
            if got:
                return got
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")

    return _wait


@pytest.fixture
def dataset(client: Any, register: Callable[..., dict[str, str]]) -> tuple[dict[str, str], str]:
    h = register("alice")
    r = client.post("/api/datasets", headers=h, files={"file": ("qa.jsonl", qa_jsonl())})
    assert r.status_code == 201, r.text
    return h, r.json()["id"]
