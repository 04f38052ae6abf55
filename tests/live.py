"""The app as it runs: a real uvicorn process with its worker thread on, a file database (or the
PostgreSQL of TEST_DATABASE_URL) per test, a short poll interval. It can be SIGKILLed and started
again on the same data, as a crash and a restart would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PG_URL, ROOT, migrate

CHEAP_HASHES = {"LLMTUNER_AUTH__ARGON2_TIME_COST": "1", "LLMTUNER_AUTH__ARGON2_MEMORY_KIB": "8192"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveApp:
    def __init__(self, data_dir: Path, db_url: str, env: dict[str, str] | None = None) -> None:
        self.data_dir, self.db_url = data_dir, db_url
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ, **CHEAP_HASHES, "LLMTUNER_ENV": "test", "LLMTUNER_DATA_DIR": str(data_dir),
            "LLMTUNER_DATABASE_URL": db_url, "LLMTUNER_PUBLIC_BASE_URL": self.url,
            "LLMTUNER_WORKER__POLL_INTERVAL_SECONDS": "0.2", "LLMTUNER_DATASET_WORKERS": "1",
            "LLMTUNER_JWT__SECRET": "live-test-secret-" + "x" * 32, **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def start(self, timeout: float = 60) -> LiveApp:
        log = open(self.data_dir.parent / f"api-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(self.port), "--no-access-log"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited with {self.proc.returncode}: {self.log()[-3000:]}")
            try:
                if self.http.get("/api/health").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API did not start: {self.log()[-3000:]}")

    def log(self) -> str:
        return (self.data_dir.parent / f"api-{self.port}.log").read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the API process alone: the training processes it started live on (own sessions)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def register(self, username: str = "alice", password: str = "correct horse battery") -> dict[str, str]:
        r = self.http.post("/api/auth/register", json={"username": username, "email": f"{username}@example.com",
                                                        "password": password})
        assert r.status_code == 201, r.text
        r = self.http.post("/api/auth/token", data={"username": username, "password": password})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    def wait_for(self, check: Callable[[], Any], timeout: float = 180, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = check()
            if got:
                return got
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}; API log tail:\n{self.log()[-3000:]}")


def kill_job_processes(data_dir: Path) -> None:
    """Kill what the app's local backend started under data_dir (a test's leftovers)."""
    import json

    for handle_file in (data_dir / "jobs").glob("*/handle.json"):
        pid = json.loads(handle_file.read_text()).get("pid")
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, TypeError):
            pass


def _pg_schema(name: str) -> str:
    """A fresh schema of its own on TEST_DATABASE_URL (the session's tables live in `public`)."""
    from sqlalchemy import text

    from app.db import make_engine

    assert PG_URL
    schema = "live_" + "".join(c if c.isalnum() else "_" for c in name.lower())[-40:]
    eng = make_engine(PG_URL, pool_size=1)
    with eng.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    eng.dispose()
    return f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"


@pytest.fixture
def live_factory(tmp_path: Path) -> Iterator[Callable[..., LiveApp]]:
    """Start API processes on one data dir and database (call it twice for two replicas)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    db_url = _pg_schema(tmp_path.name) if PG_URL else f"sqlite:///{data_dir / 'llmtuner.db'}"
    migrate(db_url)
    apps: list[LiveApp] = []

    def make(env: dict[str, str] | None = None) -> LiveApp:
        apps.append(LiveApp(data_dir, db_url, env).start())
        return apps[-1]

    yield make
    for a in apps:
        a.stop()
    kill_job_processes(data_dir)


@pytest.fixture
def live(live_factory: Callable[..., LiveApp]) -> LiveApp:
    return live_factory()
