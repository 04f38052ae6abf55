"""The app served the way `make run` serves it (migrations, then uvicorn with the worker on) on a free
loopback port, with its own data directory and SQLite file; for the browser test and
bench/frontend_load.py."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FRONTEND = ROOT / "frontend"
BIN = Path(sys.executable).parent


def chromium() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def ensure_built() -> None:
    """frontend/dist up to date with the sources and the API's schema (frontend/scripts/ensure_built.py)."""
    assert shutil.which("node") and shutil.which("npm"), "Node.js 20+ and npm are needed to build the dashboard"
    r = subprocess.run([sys.executable, str(FRONTEND / "scripts" / "ensure_built.py")], cwd=ROOT)
    assert r.returncode == 0, "the dashboard build failed (output above)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(data: Path, **env_extra: str) -> Iterator[str]:
    """Yield the base URL of a fresh server over `data`; its log ends up in data/server.log."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LLMTUNER_DATA_DIR": str(data), "LLMTUNER_DATABASE_URL": f"sqlite:///{data / 'app.db'}",
           "LLMTUNER_PUBLIC_BASE_URL": base, "LLMTUNER_ENV": "development", "UVICORN_ACCESS_LOG": "false",
           **env_extra}
    subprocess.run([str(BIN / "alembic"), "upgrade", "head"], cwd=ROOT, env=env, check=True, capture_output=True)
    with (data / "server.log").open("wb") as log:
        proc = subprocess.Popen([str(BIN / "uvicorn"), "app.main:create_app", "--factory", "--host", "127.0.0.1",
                                 "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"{base}/api/health", timeout=2)
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError((data / "server.log").read_text()[-3000:]) from None
                    time.sleep(0.3)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            stop_children_of(data)


def stop_children_of(data: Path) -> None:
    """Model servers and training processes outlive the API by design (a restart adopts them), so
    the ones this server started over `data` are stopped here rather than left running."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(data).encode() in cmdline.read_bytes():
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue
