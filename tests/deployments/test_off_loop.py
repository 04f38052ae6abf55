"""No database work on the event loop, where one slow query would stall every request of the
process: the routes that must be `async` (they await a model server, a backend or a password-hash
slot) do their queries and commits in the threadpool, and so does a session's teardown when it has
something to roll back. Watched here through the session's own events, on every flow those routes
serve (tests/core/test_event_loop.py lists them)."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from app.backends.base import Backends
from tests.deployments.conftest import FakeEndpointBackend
from tests.jobs import TINY_ID

Headers = dict[str, str]
EVENTS = ("do_orm_execute", "after_begin", "before_commit", "after_soft_rollback", "after_transaction_end")


@pytest.fixture
def backends(fake_backends: Backends) -> Backends:
    return fake_backends


@pytest.fixture
def on_loop() -> Iterator[list[str]]:
    """What the sessions did in a thread that runs an event loop (where they should do nothing)."""
    seen: list[str] = []

    def watch(name: str) -> Callable[..., None]:
        def listener(*args: Any, **kwargs: Any) -> None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return  # a worker thread: fine
            frames = [f for f in traceback.extract_stack() if "/app/" in f.filename]
            seen.append(f"{name} at " + " < ".join(f"{f.filename.rsplit('/app/', 1)[1]}:{f.lineno}"
                                                    for f in reversed(frames[-3:])))
        return listener

    listeners = [(name, watch(name)) for name in EVENTS]
    for name, fn in listeners:
        event.listen(Session, name, fn)
    yield seen
    for name, fn in listeners:
        event.remove(Session, name, fn)


def test_the_async_routes_query_and_commit_off_the_event_loop(
        client: Any, register: Callable[..., Headers], user_id: Callable[..., str], completed_job: Any,
        reconcile_once: Callable[..., None], fake_backend: FakeEndpointBackend, on_loop: list[str]) -> None:
    alice = register("alice")  # register and token
    jobs = [completed_job(user_id(alice)).job_name for _ in range(3)]
    deploys = [client.post("/api/deploy-model", headers=alice, json={"model_name": "mine", "job_name": jobs[0]}),
               client.post("/api/deploy-model", headers={**alice, "Idempotency-Key": "k1"}, json={
                   "model_name": "shared", "base_model": TINY_ID, "adapters": [{"job_name": jobs[1], "name": "a"}]})]
    assert [r.status_code for r in deploys] == [202, 202], [r.text for r in deploys]
    reconcile_once()
    fake_backend.set("mine-endpoint", "InService")
    fake_backend.set("shared-endpoint", "InService")
    reconcile_once()
    rows = b"".join(b'{"prompt": "q%d", "response": "a"}\n' % i for i in range(4))
    key = client.post("/api/api-keys", headers=alice, json={"name": "k", "scope": "inference"}).json()["key"]
    answers = [
        client.post("/api/datasets", headers=alice, files={"file": ("qa.jsonl", rows)}),
        client.post("/api/invoke-model", headers=alice, json={"endpoint_name": "mine-endpoint", "input_text": "x"}),
        client.post("/api/v1/generate", headers=alice, json={"model_id": "mine-endpoint", "prompt": "x"}),
        client.post("/v1/chat/completions", headers=alice,
                    json={"model": "mine", "messages": [{"role": "user", "content": "x"}]}),
        client.post("/v1/completions", headers=alice, json={"model": "a", "prompt": "x", "stream": True}),
        client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},  # an API key's check
                    json={"model": "mine", "messages": [{"role": "user", "content": "x"}]}),
        client.post("/api/endpoint/shared-endpoint/adapters", headers=alice, json={"job_name": jobs[2]}),
        client.delete(f"/api/endpoint/shared-endpoint/adapters/{jobs[2]}", headers=alice),
        # refusals: the request's queries and the failed create's teardown
        client.post("/api/invoke-model", headers=alice, json={"endpoint_name": "nope-endpoint", "input_text": "x"}),
        client.post("/api/deploy-model", headers=alice, json={"model_name": "mine", "job_name": jobs[0]}),
        client.post("/api/auth/token", data={"username": "alice", "password": "wrong password"}),
    ]
    assert [r.status_code for r in answers] == [201, 200, 200, 200, 200, 200, 201, 200, 404, 409, 401], \
        [r.text for r in answers]
    assert on_loop == [], "\n".join(sorted(set(on_loop)))
