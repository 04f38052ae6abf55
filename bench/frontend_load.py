"""The dashboard's loading figures in headless Chromium (frontend/e2e/load_bench.mjs), against the app
served as `make run` serves it, with 1,000 jobs in the user's list (one with 3 x 200 metric points).

Prints the first page's gzipped JavaScript and its time to first render, and the time until the
jobs list and a job page are on screen and usable, each from a cold browser context (median of
ROUNDS), beside its target and the ratio to it; and, as the baseline of the same run, a cold
navigation to GET /api/health (what the browser and the server cost before any dashboard code),
with each time's ratio to it.

    .venv/bin/python bench/frontend_load.py [--rounds 3] [--jobs 1000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.web.server import FRONTEND, chromium, ensure_built, running_server  # noqa: E402

TARGETS = {"first_js_gz_bytes": 250 * 1024, "first_render_ms": 1000, "jobs_list_ms": 1000, "job_interactive_ms": 1000}


def post(url: str, body: bytes, content_type: str) -> dict[str, object]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def sign_up(base: str) -> tuple[str, str]:
    user, password = "bench", "bench-password-123"
    post(f"{base}/api/auth/register", json.dumps({"username": user, "email": "bench@example.com",
                                                   "password": password}).encode(), "application/json")
    form = urllib.parse.urlencode({"username": user, "password": password}).encode()
    return str(post(f"{base}/api/auth/token", form, "application/x-www-form-urlencoded")["access_token"]), user


def seed_jobs(db_url: str, username: str, n: int) -> str:
    """`n` Completed jobs for `username`, written straight to the database; the newest gets metrics."""
    from sqlalchemy import func, select

    import app.models_registry  # noqa: F401 - every table, for the foreign keys
    from app.auth.models import User
    from app.db import make_engine, make_sessionmaker
    from app.training.models import JobMetric, TrainingJob
    from app.usage import days

    engine = make_engine(db_url, pool_size=1)
    now = datetime.now(UTC)
    with make_sessionmaker(engine)() as s:
        uid = s.scalar(select(User.id).where(User.username == username))
        assert uid
        jobs = [TrainingJob(job_name=f"llm-tune-bench-tiny-llama-{i:05d}", user_id=uid,
                            base_model="llmtuner/tiny-llama",
                            hyperparameters={"epochs": 3}, instance_type="local", backend="local", status="Completed",
                            secondary_status="Completed", created_at=now - timedelta(minutes=n - i),
                            started_at=now - timedelta(minutes=n - i), ended_at=now - timedelta(minutes=n - i - 1),
                            billable_seconds=60, progress={"step": 200, "total_steps": 200, "percent": 100.0},
                            model_artifacts_uri=f"local://users/{uid}/models/bench-{i}/output/model.tar.gz")
                for i in range(n)]
        s.add_all(jobs)
        s.flush()
        newest = jobs[-1]
        s.add_all(JobMetric(job_id=newest.id, metric_name=name, step=step, epoch=step / 67, value=value(step))
                  for step in range(1, 201)
                  for name, value in (("train_loss", lambda k: 2.5 * math.exp(-k / 60) + 0.4),
                                      ("eval_loss", lambda k: 2.6 * math.exp(-k / 70) + 0.5),
                                      ("learning_rate", lambda k: 2e-4 * (1 - k / 200))))
        s.flush()
        newest.last_metric_id = s.scalar(select(func.max(JobMetric.id)))  # as the worker keeps them
        days.rebuild(s)
        s.commit()
        name = newest.job_name
    engine.dispose()
    return name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1000)
    args = ap.parse_args()
    if chromium() is None:
        sys.exit("Chromium is not installed (apt-get install chromium)")
    ensure_built()
    with tempfile.TemporaryDirectory(prefix="frontend-load-") as tmp:
        data = Path(tmp)
        with running_server(data, LLMTUNER_WORKER__ENABLED="false") as base:
            token, user = sign_up(base)
            job = seed_jobs(f"sqlite:///{data / 'app.db'}", user, args.jobs)
            env = {**os.environ, "BASE_URL": base, "TOKEN": token, "USERNAME": user, "JOB": job,
                   "ROUNDS": str(args.rounds), "CHROMIUM": chromium() or ""}
            r = subprocess.run(["node", "e2e/load_bench.mjs"], cwd=FRONTEND, env=env, capture_output=True, text=True)
            if r.returncode:
                sys.exit(f"load_bench.mjs failed:\n{r.stdout}\n{r.stderr}")
            print(r.stderr, end="", file=sys.stderr)  # TRACE=1: each page's requests, start-end ms
    got = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"dashboard loading, headless Chromium, {args.jobs} jobs in the list, median of {args.rounds} cold loads")
    base = got["baseline_ms"]["median"]
    print(f"baseline: cold navigation to /api/health {base:.0f} ms (rounds {fmt(got['baseline_ms'])})")
    print(f"{'figure':<22}{'value':>12}{'target':>12}{'/target':>9}{'/baseline':>11}  all rounds")
    for key, target in TARGETS.items():
        v = got[key]
        if key.endswith("bytes"):
            print(f"{key:<22}{v / 1024:>9.1f} KB{target / 1024:>9.0f} KB{v / target:>9.2f}{'':>11}  "
                  f"{got['first_js_files']} file(s)")
        else:
            m = v["median"]
            print(f"{key:<22}{m:>9.0f} ms{target:>9.0f} ms{m / target:>9.2f}{m / base:>11.1f}  {fmt(v)}")


def fmt(v: dict[str, list[float]]) -> str:
    return ", ".join(f"{x:.0f}" for x in v["all"])


if __name__ == "__main__":
    main()
