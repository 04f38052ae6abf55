"""A served app (not env=test) freezes its start-up heap and raises the young-generation GC
threshold; a test app leaves the process's collector alone. In a subprocess: both are process-wide."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from app.main import GC_YOUNG_THRESHOLD
from tests.conftest import ROOT
from tests.settings import SECRET_ENV

SCRIPT = """
import gc, sys
from fastapi.testclient import TestClient
from app.config import Settings
from app.main import create_app
before = gc.get_threshold()
app = create_app(Settings(env=sys.argv[1], worker={"enabled": False}))
with TestClient(app) as c:
    assert c.get("/api/health").status_code == 200
    print(repr((before, gc.get_threshold(), gc.get_freeze_count() > 0)))
"""


def run(env_name: str, tmp_path: Path) -> tuple[tuple[int, ...], tuple[int, ...], bool]:
    env = {**os.environ, **SECRET_ENV, "LLMTUNER_DATABASE_URL": f"sqlite:///{tmp_path / 'gc.db'}",
           "LLMTUNER_DATA_DIR": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", SCRIPT, env_name], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return ast.literal_eval(res.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_served_app_tunes_the_collector(tmp_path: Path) -> None:
    before, after, frozen = run("development", tmp_path)
    assert after == (GC_YOUNG_THRESHOLD, *before[1:]) and frozen
    before, after, frozen = run("test", tmp_path)
    assert after == before and not frozen
