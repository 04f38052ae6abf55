"""A fresh API process whose very first request is GET /api/auth/me (no ORM use before it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, migrate
from tests.settings import SECRET_ENV

SCRIPT = """
import sys
from fastapi.testclient import TestClient
from app.main import create_app
from app.config import Settings
s = Settings(env="test", worker={"enabled": False})
app = create_app(s)
with TestClient(app) as c:
    if sys.argv[1] == "register":
        c.post("/api/auth/register", json={"username": "first", "email": "f@x.io", "password": "long enough pw"})
        tok = c.post("/api/auth/token", data={"username": "first", "password": "long enough pw"})
        print(tok.json()["access_token"])
    else:
        r = c.get("/api/auth/me", headers={"Authorization": "Bearer " + sys.argv[2]})
        print(r.status_code, r.json().get("username"))
"""


def test_me_as_first_request_of_a_fresh_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    migrate(url)
    env = {**os.environ, **SECRET_ENV, "LLMTUNER_DATABASE_URL": url, "LLMTUNER_DATA_DIR": str(tmp_path),
           "LLMTUNER_AUTH__ARGON2_TIME_COST": "1", "LLMTUNER_AUTH__ARGON2_MEMORY_KIB": "8192"}

    def run(*args: str) -> str:
        res = subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        return res.stdout.strip().splitlines()[-1]

    token = run("register")
    assert run("me", token) == "200 first"
