"""The dashboard in a real browser: Debian's Chromium, driven by playwright-core (frontend/e2e/journey.mjs),
against the real server with its worker and the built-in tiny model, the way `make run` serves it.

Skipped, with the reason printed, only where Chromium is not installed (`.ci/run` installs it).
Screenshots of every page land in frontend/e2e/artifacts/.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FRONTEND = ROOT / "frontend"
ARTIFACTS = FRONTEND / "e2e" / "artifacts"
BIN = Path(sys.executable).parent


def chromium() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def built() -> None:
    if chromium() is None:
        print("SKIP browser test: no Chromium (apt-get install chromium; .ci/run does)", file=sys.stderr)
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    assert shutil.which("node") and shutil.which("npm"), "Node.js 20+ and npm are needed to build the dashboard"
    r = subprocess.run([sys.executable, str(FRONTEND / "scripts" / "ensure_built.py")], cwd=ROOT)
    assert r.returncode == 0, "the dashboard build failed (output above)"


@pytest.fixture(scope="module")
def server(built: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data = tmp_path_factory.mktemp("web-e2e")
    env = {**os.environ, "LLMTUNER_DATA_DIR": str(data), "LLMTUNER_DATABASE_URL": f"sqlite:///{data / 'e2e.db'}",
           "LLMTUNER_PUBLIC_BASE_URL": base, "LLMTUNER_ENV": "development", "UVICORN_ACCESS_LOG": "false"}
    subprocess.run([str(BIN / "alembic"), "upgrade", "head"], cwd=ROOT, env=env, check=True, capture_output=True)
    log = (data / "server.log").open("wb")
    proc = subprocess.Popen([str(BIN / "uvicorn"), "app.main:create_app", "--factory", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (data / "server.log").read_text()[-3000:]
                time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        text = (data / "server.log").read_text(errors="replace")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "server.log").write_text(text)


def test_unit_tests_of_the_pages_logic(built: None) -> None:
    r = subprocess.run(["npx", "vitest", "run"], cwd=FRONTEND, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_the_whole_journey_in_chromium(server: str) -> None:
    env = {**os.environ, "BASE_URL": server, "ARTIFACTS": str(ARTIFACTS), "CHROMIUM": chromium() or ""}
    r = subprocess.run(["node", "e2e/journey.mjs"], cwd=FRONTEND, env=env, capture_output=True, text=True,
                       timeout=540)
    print(r.stdout)
    assert r.returncode == 0, f"{r.stdout[-4000:]}\n{r.stderr[-4000:]}\nscreenshots and server.log in {ARTIFACTS}"
