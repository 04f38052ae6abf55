"""A real server for the SDK and CLI: the app served by uvicorn on a free loopback port, with its
worker on, SQLite in a temporary folder and the built-in tiny model, shared by the tests of this folder."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import select

from app.config import AuthSettings, WorkerSettings
from app.main import create_app
from tests.conftest import migrate
from tests.jobs import TINY_ID, kill_process_group
from tests.settings import make_test_settings

QA = [("How do I reset my password?", "Click Forgot Password on the login page."),
      ("What are your business hours?", "Monday to Friday, 9 AM to 6 PM."),
      ("How do I cancel my subscription?", "Open Account Settings and choose Cancel.")]
# Few, quick steps on the tiny model: the journey is about the client, not the training.
FAST = {"epochs": 2, "batch_size": 4, "learning_rate": 3e-3, "logging_steps": 1, "max_length": 64}
PASSWORD = "correct horse battery"


@dataclass
class LiveServer:
    url: str
    app: Any

    def register(self, username: str) -> str:
        """A new user; returns a login token for it."""
        r = httpx.post(f"{self.url}/api/auth/register",
                       json={"username": username, "email": f"{username}@example.com", "password": PASSWORD})
        assert r.status_code == 201, r.text
        r = httpx.post(f"{self.url}/api/auth/token", data={"username": username, "password": PASSWORD})
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="package")  # stopped (worker and model servers too) once tests/client is done
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("client-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db_url = f"sqlite:///{root / 'client.db'}"
    migrate(db_url)
    settings = make_test_settings(
        data_dir=root / "data", database_url=db_url, public_base_url=url,
        worker=WorkerSettings(enabled=True, poll_interval_seconds=0.2),
        auth=AuthSettings(argon2_time_cost=1, argon2_memory_kib=8192),
    )
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="client-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.05)
    try:
        yield LiveServer(url, app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        from app.deployments.models import Endpoint
        from app.training.models import TrainingJob

        with app.state.sessionmaker() as s:  # no model server or trainer outlives the session
            for row in [*s.scalars(select(Endpoint)), *s.scalars(select(TrainingJob))]:
                kill_process_group(row.backend_handle or {})


@pytest.fixture
def qa_file(tmp_path: Path) -> Path:
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": QA[i % 3][0], "response": QA[i % 3][1]}) for i in range(24)))
    return path


@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    """Line 2 is not JSON, line 3 lacks a response."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": oops\n{"prompt": "only a prompt"}\n')
    return path


__all__ = ["FAST", "PASSWORD", "TINY_ID", "LiveServer"]
