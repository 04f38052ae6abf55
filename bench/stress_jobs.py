"""Exactly-once under load: two API processes and a separate worker on one PostgreSQL database.

200 job creates from 16 threads over 8 users, most of them retries of a few Idempotency-Keys,
spread over both APIs (each with its embedded worker on, as is the default, beside
`python -m app.worker`). After the creates it lets the workers submit for a while, stops what is
still running or queued, waits for every job to end, and prints:

    creates, 5xx, other errors by code, jobs, expected jobs (distinct keys + creates without one),
    duplicate submissions (a job's "Submitted" events beyond one), duplicate processes (train.py
    "start" lines beyond one in a job's folder)

Targets: 0 5xx, 0 duplicates, jobs == expected. Exits 1 when one is missed.

    .venv/bin/python bench/stress_jobs.py [--database-url postgresql://...] [--creates 200]

The database URL defaults to TEST_DATABASE_URL; the run uses a schema of its own there and drops it
at the end. Bounded in time by --timeout (seconds for the jobs to end after the creates).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
QA = [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(24)]
HP = {"epochs": 1, "batch_size": 2, "max_steps": 1, "logging_steps": 1, "max_length": 64}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def schema_url(base: str, schema: str, create: bool) -> str:
    import psycopg

    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        if create:
            conn.execute(f"CREATE SCHEMA {schema}")
    return f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_healthy(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} did not become healthy")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--database-url", default=os.environ.get("TEST_DATABASE_URL",
                                                            "postgresql://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--creates", type=int, default=200)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--keys", type=int, default=40, help="distinct Idempotency-Keys (per user) the retries share")
    ap.add_argument("--settle", type=float, default=20, help="seconds the workers submit before the stop-all")
    ap.add_argument("--timeout", type=float, default=180)
    ap.add_argument("--keep", action="store_true", help="keep the data dir and logs (printed)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="stress-jobs-"))
    schema = f"stress_{os.getpid()}"
    db_url = schema_url(args.database_url, schema, create=True)
    env = {**os.environ, "LLMTUNER_ENV": "test", "LLMTUNER_DATA_DIR": str(work / "data"),
           "LLMTUNER_DATABASE_URL": db_url, "LLMTUNER_JWT__SECRET": "stress-" + "s" * 40,
           "LLMTUNER_WORKER__POLL_INTERVAL_SECONDS": "0.3", "LLMTUNER_WORKER__MAX_CONCURRENT_LOCAL_JOBS": "2",
           "LLMTUNER_LIMITS__MAX_ACTIVE_JOBS_PER_USER": "10000", "LLMTUNER_DATASET_WORKERS": "1",
           "LLMTUNER_AUTH__ARGON2_TIME_COST": "1", "LLMTUNER_AUTH__ARGON2_MEMORY_KIB": "8192"}
    subprocess.run([sys.executable, "-m", "alembic", "-x", f"url={db_url}", "upgrade", "head"], cwd=ROOT,
                   env=env, check=True, capture_output=True)
    procs: list[subprocess.Popen[bytes]] = []
    urls = []
    try:
        for i in range(2):
            port = free_port()
            urls.append(f"http://127.0.0.1:{port}")
            procs.append(start([sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port",
                                str(port), "--no-access-log"], {**env, "LLMTUNER_PUBLIC_BASE_URL": urls[-1]},
                               work / f"api-{i}.log"))
        procs.append(start([sys.executable, "-m", "app.worker"], env, work / "worker.log"))
        for url in urls:
            wait_healthy(url)
        return run(args, urls, work / "data")
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        for handle in (work / "data" / "jobs").glob("*/handle.json"):
            try:
                os.killpg(json.loads(handle.read_text())["pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError, KeyError):
                pass
        schema_url(args.database_url, schema, create=False)
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, urls: list[str], data_dir: Path) -> int:
    http = httpx.Client(timeout=120)
    users = []
    body = "\n".join(json.dumps(r) for r in QA).encode()
    for u in range(args.users):
        name, pw = f"stress{u}", "correct horse battery"
        http.post(f"{urls[0]}/api/auth/register", json={"username": name, "email": f"{name}@x.io", "password": pw})
        tok = http.post(f"{urls[0]}/api/auth/token", data={"username": name, "password": pw}).json()["access_token"]
        h = {"Authorization": f"Bearer {tok}"}
        ds = http.post(f"{urls[0]}/api/datasets", headers=h, files={"file": ("qa.jsonl", body)}).json()["id"]
        users.append((h, ds))

    rng = random.Random(7)
    plan = []  # (user, key or None)
    for i in range(args.creates):
        plan.append((i % args.users, f"key-{rng.randrange(args.keys)}" if rng.random() < 0.7 else None))
    expected = len({(u, k) for u, k in plan if k}) + sum(1 for _, k in plan if k is None)
    statuses: Counter[str] = Counter()
    lock = threading.Lock()
    todo = iter(enumerate(plan))

    def client_thread() -> None:
        c = httpx.Client(timeout=120)
        while True:
            with lock:
                item = next(todo, None)
            if item is None:
                return
            i, (u, key) = item
            h, ds = users[u]
            headers = {**h, **({"Idempotency-Key": key} if key else {})}
            r = c.post(f"{urls[i % len(urls)]}/api/training-job", headers=headers,
                       json={"dataset_id": ds, "hyperparameters": HP})
            code = str(r.status_code) if r.status_code < 400 else f"{r.status_code} {r.json()['error']['code']}"
            if r.status_code >= 400 and args.keep:
                print(r.status_code, r.text[:300])
            with lock:
                statuses[code] += 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=client_thread) for _ in range(args.threads)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    create_s = time.monotonic() - t0
    time.sleep(args.settle)

    def all_jobs() -> list[tuple[dict[str, str], dict[str, Any]]]:
        out = []
        for h, _ in users:
            after = None
            while True:
                page = http.get(f"{urls[0]}/api/training-jobs", headers=h,
                                params={"limit": 100, **({"after": after} if after else {})}).json()
                out += [(h, j) for j in page["data"]]
                if not page["has_more"]:
                    break
                after = page["next_cursor"]
        return out

    for h, j in all_jobs():
        if j["status"] in ("InProgress", "Pending"):
            http.post(f"{urls[1]}/api/training-job/{j['job_name']}/stop", headers=h)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        jobs = all_jobs()
        if all(j["status"] in ("Completed", "Failed", "Stopped") for _, j in jobs):
            break
        time.sleep(1)
    jobs = all_jobs()
    dup_submits = 0
    for h, j in jobs:
        events = http.get(f"{urls[0]}/api/training-job/{j['job_name']}/events", headers=h).json()
        dup_submits += max(0, sum(1 for e in events if e["message"].startswith("Submitted to the")) - 1)
    dup_processes = 0
    started = len(list((data_dir / "jobs").glob("*/handle.json")))  # a backend name has the job's id
    for log in (data_dir / "jobs").glob("*/train.stdout"):
        starts = sum(1 for line in log.read_text().splitlines()
                     if line.startswith("{") and json.loads(line).get("event") == "start")
        dup_processes += max(0, starts - 1)
    five = sum(n for code, n in statuses.items() if code.startswith("5"))
    print(f"creates: {args.creates} in {create_s:.1f} s from {args.threads} threads over {len(urls)} APIs "
          f"(+ a separate worker), {args.users} users")
    print(f"answers: {dict(sorted(statuses.items()))}")
    print(f"5xx: {five}")
    print(f"jobs: {len(jobs)} (expected {expected}: distinct keys + creates without one); "
          f"ended: {Counter(j['status'] for _, j in jobs)}; submitted to the backend: {started}")
    print(f"duplicate submissions: {dup_submits}; duplicate processes: {dup_processes}")
    ok = five == 0 and dup_submits == 0 and dup_processes == 0 and len(jobs) == expected
    print("targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
