"""The dashboard in a real browser: Debian's Chromium, driven by playwright-core (frontend/e2e/journey.mjs),
against the real server with its worker and the built-in tiny model, the way `make run` serves it.

Skipped, with the reason printed, only where Chromium is not installed (`.ci/run` installs it).
Screenshots of every page land in frontend/e2e/artifacts/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.web.server import FRONTEND, chromium, ensure_built, running_server

ARTIFACTS = FRONTEND / "e2e" / "artifacts"


@pytest.fixture(scope="module")
def built() -> None:
    if chromium() is None:
        print("SKIP browser test: no Chromium (apt-get install chromium; .ci/run does)", file=sys.stderr)
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    ensure_built()


@pytest.fixture(scope="module")
def server(built: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("web-e2e")
    try:
        with running_server(data) as base:
            yield base
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        if (data / "server.log").is_file():
            shutil.copy(data / "server.log", ARTIFACTS / "server.log")


def test_unit_tests_of_the_pages_logic(built: None) -> None:
    r = subprocess.run(["npx", "vitest", "run"], cwd=FRONTEND, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_the_whole_journey_in_chromium(server: str) -> None:
    env = {**os.environ, "BASE_URL": server, "ARTIFACTS": str(ARTIFACTS), "CHROMIUM": chromium() or ""}
    r = subprocess.run(["node", "e2e/journey.mjs"], cwd=FRONTEND, env=env, capture_output=True, text=True,
                       timeout=540)
    print(r.stdout)
    assert r.returncode == 0, f"{r.stdout[-4000:]}\n{r.stderr[-4000:]}\nscreenshots and server.log in {ARTIFACTS}"
