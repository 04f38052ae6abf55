"""A real base-model endpoint (serve.py on the tiny model) with two adapters trained differently, the
API served by uvicorn on a free port, and an API key: what the OpenAI client talks to."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from app.deployments.reconcile import reconcile
from app.worker import WorkerContext
from tests.deployments.conftest import (  # noqa: F401 - fixtures
    base_in_data_dir,
    build_adapter_tar,
    completed_job,
    fake_backends,
    reconcile_once,
    stop_model_servers,
    tiny_base,
    trained_tar,
)
from tests.jobs import TINY_ID, insert_job

ADAPTERS = {"support": 7, "legal": 8}  # adapter name -> the seed its weights were drawn with


@pytest.fixture(scope="session")
def adapter_tars(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # noqa: F811
    return {name: build_adapter_tar(tiny_base, tmp_path_factory.mktemp(f"adapter-{name}"), seed)
            for name, seed in ADAPTERS.items()}


def tick_until(ctx: WorkerContext, check: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reconcile(ctx)
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def deployed(client: Any, register: Callable[..., dict[str, str]], user_id: Callable[..., str],
             session_factory: Any, store: Any, settings: Any, app: Any, adapter_tars: dict[str, Path],
             base_in_data_dir: Path) -> dict[str, Any]:  # noqa: F811
    """alice's InService endpoint "tiny-base" on the tiny model, adapters "support" and "legal"."""
    alice = register("alice")
    uid = user_id(alice)
    jobs = {name: insert_job(session_factory, store, uid, f"llm-tune-{name}", tar).job_name
            for name, tar in adapter_tars.items()}
    r = client.post("/api/deploy-model", headers=alice, json={
        "model_name": "tiny-base", "base_model": TINY_ID,
        "adapters": [{"job_name": job, "name": name} for name, job in jobs.items()]})
    assert r.status_code == 202, r.text
    ctx = WorkerContext(session_factory, store, app.state.backends, settings, first_pass=False)
    tick_until(ctx, lambda: client.get("/api/endpoint-status/tiny-base-endpoint", headers=alice)
               .json()["status"] == "InService", "InService")
    r = client.post("/api/api-keys", headers=alice, json={"name": "ci", "scope": "inference"})
    assert r.status_code == 201, r.text
    return {"headers": alice, "key": r.json()["key"], "jobs": jobs, "ctx": ctx}


@pytest.fixture
def live_url(client: Any, app: Any) -> Iterator[str]:
    """The app (already started by `client`) served over real HTTP, streaming included."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
