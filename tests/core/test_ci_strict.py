"""Under CI=true the suite fails, rather than skips, when PostgreSQL or the real datasets are missing."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_ci_without_a_test_database_fails_the_run() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TEST_DATABASE_URL"}
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "tests/core/test_leases.py"],
                         cwd=ROOT, env={**env, "CI": "true"}, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "TEST_DATABASE_URL is unset" in res.stdout + res.stderr
