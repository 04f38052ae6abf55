"""The routes a dashboard polls, next to a bare FastAPI `async def` route served the same way, side
by side in one run, on SQLite and on PostgreSQL.

    .venv/bin/python bench/api_load.py                          # 3 rounds of 8 s per route and database
    .venv/bin/python bench/api_load.py --db postgresql --duration 10 --rounds 5
    .venv/bin/python bench/api_load.py --db postgresql --baseline-root /tmp/other-checkout   # A/B, every route

Routes: `GET /api/auth/me`, the job list (`?limit=20`), one job, its metrics and its events, an
older job's metrics, the endpoint list and `/api/usage`, for a user with realistic history: 1,000
training jobs, 10,000 metric points (1,000 on each of the 10 newest jobs), 10 events per job and 20
endpoints.

Both servers are uvicorn subprocesses with the same settings (2 workers, uvloop + httptools, no
access log, as `make run` and the Docker image serve) on free loopback ports; the real app gets its
own data directory in a temp dir, migrations applied, a registered user and a token, and the embedded
worker off. The load generator is wrk (`apt-get install wrk`: `wrk -t2 -c64 -d{N}s --latency`),
or, when wrk is absent, a Python asyncio + httpx generator (slower than the server: its figures are a
floor; the script says which it used). The load generator shares the machine's cores with the servers.

Each round runs bare then every route back to back; the table gives the median of the rounds, the
ratio to the bare route's median, and the CPU other processes used meanwhile (cores, from /proc).
Target: on PostgreSQL every route >= 25% of bare req/s and p99 < 50 ms at 64 connections.

`--inprocess N` also measures the CPU time per request of the ASGI apps called in-process (raw ASGI
calls, no server, no sockets; medians of 7 runs of N calls), one request at a time and 32 at a time,
in a child process per tree: steadier than req/s when other processes share the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_PG = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/bench")
TARGET_RATIO, TARGET_P99_MS = 0.25, 50.0


# The bare route, served by uvicorn as `api_load:bare_app --factory` (this file is on --app-dir).
def bare_app():  # type: ignore[no-untyped-def]
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"status": "ok"}

    return app


# --- processes ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def uvicorn_cmd(target: str, port: int, workers: int, app_dir: Path) -> list[str]:
    # Identical for both servers: only the target differs.
    return [sys.executable, "-m", "uvicorn", target, "--factory", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--log-level", "warning", "--app-dir", str(app_dir)]


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(p.name))
                out.extend(children(int(p.name)))
    return out


def start_server(name: str, target: str, env: dict[str, str], workers: int, tmp: Path, probe: str,
                 root: Path = ROOT) -> Server:
    port = free_port()
    log = tmp / f"{name}.log"
    proc = subprocess.Popen(uvicorn_cmd(target, port, workers, BENCH_DIR), cwd=root, env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    srv = Server(name, port, proc, log)
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(srv.base + probe, timeout=1).status_code < 500:
                # Every worker must be up: uvicorn answers as soon as the first one is.
                if len(children(proc.pid)) >= workers:
                    time.sleep(1.0)
                    return srv
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    srv.stop()
    raise SystemExit(f"{name} server did not start:\n{log.read_text()[-3000:]}")


def drain(srv: Server, timeout: float = 60) -> None:
    """Wait until the server has answered what the load generator left queued (a route slower than
    the run leaves requests in flight), so that the next run measures its own route only."""
    probe = "/ping" if srv.name == "bare" else "/api/health"
    deadline = time.time() + timeout
    while time.time() < deadline:
        t0 = time.monotonic()
        try:
            if httpx.get(srv.base + probe, timeout=timeout).status_code < 500 and time.monotonic() - t0 < 0.5:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


# --- CPU accounting -------------------------------------------------------------------------

def _busy_jiffies() -> int:
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(f) - f[3] - f[4]  # minus idle and iowait


def postgres_pids() -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (p / "comm").read_text().strip() == "postgres":
                    out.append(int(p.name))
            except OSError:
                continue
    return out


def _proc_jiffies(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(f[11]) + int(f[12])  # utime + stime
    return total


# --- load generators ------------------------------------------------------------------------

@dataclass
class Result:
    rps: float
    p99_ms: float
    errors: int
    other_cpu: float = 0.0  # cores used by processes other than the server, load generator and postgres
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def server_us(self) -> float:
        """Server CPU per request (µs): steadier than req/s when other processes share the cores."""
        return self.extra.get("server_cpu", 0.0) / self.rps * 1e6 if self.rps else float("nan")


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(url: str, headers: dict[str, str], duration: int, conns: int, threads: int,
            server_pids: list[int]) -> Result:
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency", "--timeout", "10s"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(url)
    tick = os.sysconf("SC_CLK_TCK")
    busy0, t0 = _busy_jiffies(), time.monotonic()
    ours0 = _proc_jiffies(server_pids)
    pg = postgres_pids()
    pg0 = _proc_jiffies(pg)
    kids0 = _children_cpu()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate()
    # wrk's own CPU: it has exited and been reaped, so it shows in our children's rusage.
    wrk_cpu = _children_cpu() - kids0
    wall = time.monotonic() - t0
    busy = (_busy_jiffies() - busy0) / tick
    ours = (_proc_jiffies(server_pids) - ours0) / tick
    pg_cpu = (_proc_jiffies(pg) - pg0) / tick
    if proc.returncode != 0:
        raise SystemExit(f"wrk failed:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = {q: _ms(v, u) for q, v, u in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)}
    p99 = pct.get("99", float("nan"))
    errors = 0
    if m2 := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        errors += int(m2.group(1))
    if m3 := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in m3.groups())
    other = max(0.0, (busy - ours - wrk_cpu - pg_cpu) / wall)
    return Result(rps, p99, errors, other, {"server_cpu": ours / wall, "loadgen_cpu": wrk_cpu / wall,
                                            "postgres_cpu": pg_cpu / wall, "p50_ms": pct.get("50", float("nan")),
                                            "p90_ms": pct.get("90", float("nan"))})


def _children_cpu() -> float:
    r = os.times()
    return r.children_user + r.children_system


def run_python(url: str, headers: dict[str, str], duration: int, conns: int, threads: int,
               server_pids: list[int]) -> Result:
    tick = os.sysconf("SC_CLK_TCK")
    busy0, ours0, self0 = _busy_jiffies(), _proc_jiffies(server_pids), _proc_jiffies([os.getpid()])
    pg = postgres_pids()
    pg0 = _proc_jiffies(pg)
    t0 = time.monotonic()
    lat, errors = asyncio.run(_python_load(url, headers, duration, conns))
    wall = time.monotonic() - t0
    busy = (_busy_jiffies() - busy0) / tick
    ours = (_proc_jiffies(server_pids) - ours0) / tick
    gen = (_proc_jiffies([os.getpid()]) - self0) / tick
    pg_cpu = (_proc_jiffies(pg) - pg0) / tick
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3 if lat else float("nan")
    p50 = lat[len(lat) // 2] * 1e3 if lat else float("nan")
    p90 = lat[min(len(lat) - 1, int(len(lat) * 0.9))] * 1e3 if lat else float("nan")
    return Result(len(lat) / duration, p99, errors, max(0.0, (busy - ours - gen - pg_cpu) / wall),
                  {"server_cpu": ours / wall, "loadgen_cpu": gen / wall, "postgres_cpu": pg_cpu / wall,
                   "p50_ms": p50, "p90_ms": p90})


async def _python_load(url: str, headers: dict[str, str], duration: int, conns: int) -> tuple[list[float], int]:
    lat: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    async with httpx.AsyncClient(limits=limits, timeout=10, headers=headers) as client:
        end = time.monotonic() + duration

        async def worker() -> None:
            nonlocal errors
            while (t := time.monotonic()) < end:
                try:
                    r = await client.get(url)
                    if r.status_code >= 400:
                        errors += 1
                    else:
                        lat.append(time.monotonic() - t)
                except httpx.HTTPError:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(conns)))
    return lat, errors


# --- setup of the real app ------------------------------------------------------------------

def reset_postgres(url: str) -> None:
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    dbname = dsn.rsplit("/", 1)[1].split("?")[0]
    if dbname == "test":
        raise SystemExit("refusing to use the test suite's database `test` for the bench")
    admin = dsn.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
            conn.execute(f'CREATE DATABASE "{dbname}"')
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")


def app_env(db_url: str, data_dir: Path, secret: str, root: Path = ROOT) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMTUNER_")}
    env.update({
        "LLMTUNER_ENV": "development", "LLMTUNER_DATA_DIR": str(data_dir), "LLMTUNER_DATABASE_URL": db_url,
        "LLMTUNER_JWT__SECRET": secret, "LLMTUNER_WORKER__ENABLED": "false",
        "PYTHONPATH": str(root),
    })
    return env


def migrate(env: dict[str, str]) -> None:
    r = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"migrations failed:\n{r.stdout}\n{r.stderr}")


SEED_JOBS, SEED_METRIC_JOBS, SEED_POINTS_PER_JOB, SEED_EVENTS_PER_JOB, SEED_ENDPOINTS = 1000, 10, 1000, 10, 20
POLLED_JOB = "bench-job-0999"  # the newest job: one of those with metric points
# The oldest job with points: 9,000 newer points stand between its own and the newest id, which a
# read that searches the points table by id pays for (its job's row records its newest point).
OLDER_JOB = f"bench-job-{SEED_JOBS - SEED_METRIC_JOBS:04d}"


# Each job's newest metric point, as the worker records it with the points.
LAST_POINTS = ("UPDATE training_jobs SET last_metric_id = "
               "(SELECT max(job_metrics.id) FROM job_metrics WHERE job_metrics.job_id = training_jobs.id)")


def seed(db_url: str, username: str) -> None:
    """A user's history as a dashboard sees it after months of use (see the module docstring)."""
    sys.path.insert(0, str(ROOT))
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import insert, select, text
    from sqlalchemy.orm import Session

    from app.auth.models import User
    from app.db import make_engine, new_id
    from app.deployments.models import Endpoint
    from app.events import Event
    from app.training.models import JobMetric, TrainingJob
    from app.usage import days

    engine = make_engine(db_url, pool_size=1)
    start = datetime.now(UTC) - timedelta(days=90)
    with engine.begin() as conn:
        uid = conn.execute(select(User.id).where(User.username == username)).scalar_one()
        jobs = []
        for i in range(SEED_JOBS):
            created = start + timedelta(hours=2 * i)
            status = ("Completed", "Failed", "Stopped")[i % 7 % 3] if i < SEED_JOBS - 2 else "InProgress"
            jobs.append({
                "id": new_id(), "job_name": f"bench-job-{i:04d}", "user_id": uid, "base_model": "llmtuner/tiny-llama",
                "hyperparameters": {"epochs": 3, "learning_rate": 2e-4, "lora_r": 16}, "instance_type": "local",
                "validation_split": 0.1, "backend": "local", "backend_handle": {"pid": 1}, "status": status,
                "secondary_status": "Training" if status == "InProgress" else status, "stop_requested": False,
                "created_at": created, "started_at": created, "ended_at": None if status == "InProgress" else created,
                "billable_seconds": 600, "price_per_hour": 0.5, "estimated_cost": 0.1,
                "actual_cost": None if status == "InProgress" else 0.083, "error_code": None, "error_message": None,
                "model_artifacts_uri": None, "progress": {"step": 300, "total_steps": 333, "percent": 90.1},
                "final_metrics": {"train_loss": 1.23} if status == "Completed" else {},
                "latest_metrics": {"train_loss": 1.2, "learning_rate": 1e-4, "eval_loss": 1.3},
                "data": {"train_key": f"users/{uid}/datasets/x/train.jsonl"},
            })
        conn.execute(insert(TrainingJob), jobs)
        metrics = [{"job_id": j["id"], "metric_name": ("train_loss", "learning_rate", "eval_loss")[k % 3],
                    "step": k // 3 * 10, "epoch": k / SEED_POINTS_PER_JOB * 3, "value": 2.0 - k / 1000,
                    "timestamp": j["created_at"] + timedelta(seconds=k)}
                   for j in jobs[-SEED_METRIC_JOBS:] for k in range(SEED_POINTS_PER_JOB)]
        conn.execute(insert(JobMetric), metrics)
        events = [{"user_id": uid, "resource_type": "training_job", "resource_id": j["id"],
                   "timestamp": j["created_at"] + timedelta(seconds=k), "level": "info", "type": "status",
                   "message": f"Pending -> Training (step {k})", "data": {"status": "InProgress", "step": k}}
                  for j in jobs for k in range(SEED_EVENTS_PER_JOB)]
        conn.execute(insert(Event), events)
        conn.execute(insert(Endpoint), [{
            "id": new_id(), "endpoint_name": f"bench-ep-{i:02d}-endpoint", "user_id": uid,
            "model_name": f"bench-ep-{i}", "job_id": jobs[-1 - i]["id"], "registered_model_id": None,
            "model_uri": f"file:///models/{i}/model.tar.gz",
            "base_model": "llmtuner/tiny-llama", "instance_type": "local", "instance_count": 1, "backend": "local",
            "backend_handle": {}, "status": "InService" if i < 3 else "Deleted", "failure_reason": None,
            "price_per_hour": 0.5, "accrued_seconds": 3600.0, "accrual_started_at": None,
            "created_at": start + timedelta(days=i), "in_service_at": None,
            "deleted_at": None if i < 3 else start + timedelta(days=i + 1)}
            for i in range(SEED_ENDPOINTS)])
    with Session(engine) as session:  # what the worker keeps as points arrive and jobs end
        session.execute(text(LAST_POINTS))
        days.rebuild(session)
        session.commit()
    with engine.connect() as conn:  # statistics, as a database with this history has (autovacuum)
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    engine.dispose()


DASHBOARD_ROUTES = [
    ("GET /api/auth/me", "/api/auth/me"),
    ("job list ?limit=20", "/api/training-jobs?limit=20"),
    ("one job", f"/api/training-job/{POLLED_JOB}"),
    ("its metrics", f"/api/training-job/{POLLED_JOB}/metrics"),
    ("older job metrics", f"/api/training-job/{OLDER_JOB}/metrics"),
    ("its events", f"/api/training-job/{POLLED_JOB}/events"),
    ("endpoint list", "/api/endpoints"),
    ("usage", "/api/usage"),
]


def login(base: str) -> dict[str, str]:
    user = {"username": "bench", "email": "bench@example.com", "password": "bench-password-123"}
    r = httpx.post(base + "/api/auth/register", json=user, timeout=30)
    assert r.status_code == 201, r.text
    r = httpx.post(base + "/api/auth/token", data={"username": "bench", "password": user["password"]}, timeout=30)
    assert r.status_code == 200, r.text
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    me = httpx.get(base + "/api/auth/me", headers=headers, timeout=10)
    assert me.status_code == 200 and me.json()["username"] == "bench", me.text
    return headers


# --- in-process CPU per request ------------------------------------------------------------

INPROCESS_CONCURRENCY = 32


def inprocess_cpu(env: dict[str, str], headers: dict[str, str], calls: int) -> dict[str, float]:
    """CPU µs per request of bare /ping and of /me, measured in a child process (its own app, the
    tree `env` puts first on PYTHONPATH)."""
    import json

    r = subprocess.run([sys.executable, __file__, "--inprocess-child", str(calls)], env=env, cwd=ROOT,
                       input=json.dumps(headers), capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"in-process measurement failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _inprocess_child(calls: int) -> None:
    import json

    import uvloop

    from app.main import create_app

    headers = [(b"host", b"127.0.0.1"), (b"user-agent", b"bench")]
    headers += [(k.lower().encode(), v.encode()) for k, v in json.loads(sys.stdin.read()).items()]

    async def call(app: object, path: str) -> None:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {}}
        sent: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        await app(scope, receive, send)  # type: ignore[operator]
        assert sent[0]["status"] == 200, sent

    async def per_request(app: object, path: str, together: int) -> float:
        async def batch() -> None:
            if together == 1:
                await call(app, path)
            else:
                await asyncio.gather(*(call(app, path) for _ in range(together)))

        for _ in range(max(1, 300 // together)):
            await batch()
        runs = []
        for _ in range(7):
            t0 = time.process_time()
            for _ in range(max(1, calls // together)):
                await batch()
            runs.append((time.process_time() - t0) / (max(1, calls // together) * together) * 1e6)
        return statistics.median(runs)

    async def run() -> dict[str, float]:
        app, bare = create_app(), bare_app()
        async with app.router.lifespan_context(app):
            return {"bare": await per_request(bare, "/ping", 1),
                    "me": await per_request(app, "/api/auth/me", 1),
                    "me_concurrent": await per_request(app, "/api/auth/me", INPROCESS_CONCURRENCY)}

    import app

    assert Path(app.__file__).resolve().parents[1] == Path(os.environ["PYTHONPATH"]).resolve(), app.__file__
    print(json.dumps(uvloop.run(run())))


# --- main -----------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=8, help="seconds per measured run")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per server and route")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of bare + every route per database (medians)")
    ap.add_argument("--routes", choices=["dashboard", "me"], default="dashboard",
                    help="every route a dashboard polls (seeded history), or /me alone")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="uvicorn worker processes (both servers)")
    ap.add_argument("--db", default="sqlite,postgresql", help="comma list: sqlite, postgresql")
    ap.add_argument("--pg-url", default=DEFAULT_PG, help="a database only the bench uses (it is wiped)")
    ap.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    ap.add_argument("--baseline-root", type=Path, default=None,
                    help="another checkout of the project (e.g. `git archive HEAD | tar -x -C DIR`): its routes "
                         "are served beside this tree's, same database, and measured in the same rounds")
    ap.add_argument("--inprocess", type=int, default=0, metavar="N",
                    help="also measure in-process CPU per request (N calls per run, e.g. 3000)")
    ap.add_argument("--inprocess-child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inprocess_child:
        _inprocess_child(args.inprocess_child)
        return 0

    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk"))
    if args.loadgen == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install wrk, or --loadgen python")
    loadgen = run_wrk if use_wrk else run_python
    gen_name = (f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency" if use_wrk
                else f"python asyncio+httpx, {args.connections} connections, {args.duration}s (wrk not found)")
    print(f"load generator: {gen_name}")
    print(f"servers: uvicorn --workers {args.workers} --loop uvloop --http httptools --no-access-log, "
          f"{os.cpu_count()} CPUs on this machine, load generator on the same machine")

    rows: list[tuple[str, str, list[Result]]] = []
    cpu_rows: list[tuple[str, str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="llmtuner-bench-") as t:
        tmp = Path(t)
        bare_env = {k: v for k, v in os.environ.items() if not k.startswith("LLMTUNER_")}
        bare = start_server("bare", "api_load:bare_app", bare_env, args.workers, tmp, "/ping")
        try:
            for db in [d.strip() for d in args.db.split(",") if d.strip()]:
                if db == "sqlite":
                    url = f"sqlite:///{tmp / 'sqlite-data' / 'llmtuner.db'}"
                elif db == "postgresql":
                    url = args.pg_url
                    try:
                        reset_postgres(url)
                    except Exception as e:  # noqa: BLE001
                        print(f"postgresql: skipped ({type(e).__name__}: {e})")
                        continue
                else:
                    raise SystemExit(f"unknown database {db!r}")
                secret = secrets.token_hex(32)
                env = app_env(url, tmp / f"{db}-data", secret)
                migrate(env)
                srv = start_server(f"app-{db}", "app.main:create_app", env, args.workers, tmp, "/api/health")
                base_srv = None
                try:
                    headers = login(srv.base)
                    routes = DASHBOARD_ROUTES if args.routes == "dashboard" else DASHBOARD_ROUTES[:1]
                    if args.routes == "dashboard":
                        seed(url, "bench")
                    for _, path in routes:  # every route answers 200 before it is measured
                        r = httpx.get(srv.base + path, headers=headers, timeout=30)
                        assert r.status_code == 200, (path, r.status_code, r.text[:500])
                    targets = [("bare async /ping", bare, bare.base + "/ping", {})]
                    targets += [(name, srv, srv.base + path, headers) for name, path in routes]
                    if args.baseline_root:
                        root = args.baseline_root.resolve()
                        benv = app_env(url, tmp / f"{db}-data", secret, root)
                        base_srv = start_server(f"baseline-{db}", "app.main:create_app", benv, args.workers, tmp,
                                                "/api/health", root)
                        targets += [(f"{name} (baseline)", base_srv, base_srv.base + path, headers)
                                    for name, path in routes]
                    for _, s, u, h in targets:
                        loadgen(u, h, args.warmup, args.connections, args.threads, s.pids())
                        drain(s)
                    results: dict[str, list[Result]] = {name: [] for name, *_ in targets}
                    for i in range(args.rounds):
                        for name, s, u, h in targets:
                            r = loadgen(u, h, args.duration, args.connections, args.threads, s.pids())
                            drain(s)
                            results[name].append(r)
                            print(f"  {db:10} round {i + 1}: {name:30} {r.rps:6.0f} req/s  p50/90/99 "
                                  f"{r.extra['p50_ms']:.1f}/{r.extra['p90_ms']:.1f}/{r.p99_ms:.1f} ms"
                                  f"  errors {r.errors}  cores: server {r.extra['server_cpu']:.2f}"
                                  f" loadgen {r.extra['loadgen_cpu']:.2f} postgres {r.extra['postgres_cpu']:.2f}"
                                  f" others {r.other_cpu:.2f}  server CPU/req {r.server_us:.0f} us", flush=True)
                    for name, s, *_ in targets:
                        if any(r.errors for r in results[name]):
                            keep = BENCH_DIR / "_out" / f"{s.name}-{int(time.time())}.log"
                            keep.parent.mkdir(exist_ok=True)
                            shutil.copy(s.log, keep)
                            last = [ln for ln in s.log.read_text().splitlines() if ln and not ln[0].isspace()]
                            print(f"  {name}: errors; server log kept in {keep}; its last lines:\n    "
                                  + "\n    ".join(last[-6:]))
                    # The token still works against a live user afterwards (no stale state).
                    assert httpx.get(srv.base + "/api/auth/me", headers=headers, timeout=60).status_code == 200
                    if args.inprocess:
                        trees = [("this tree", env)]
                        if args.baseline_root:
                            trees.append(("baseline tree", app_env(url, tmp / f"{db}-data", secret,
                                                                   args.baseline_root.resolve())))
                        for tree, tree_env in trees:
                            cpu = inprocess_cpu(tree_env, headers, args.inprocess)
                            cpu_rows.append((db, tree, cpu))
                            print(f"  {db:10} in-process ({tree}): bare {cpu['bare']:.0f} us/req, /me "
                                  f"{cpu['me']:.0f} us/req one at a time, {cpu['me_concurrent']:.0f} us/req "
                                  f"{INPROCESS_CONCURRENCY} at a time", flush=True)
                finally:
                    srv.stop()
                    if base_srv:
                        base_srv.stop()
                for name, *_ in targets:
                    rows.append((db, name, results[name]))
        finally:
            bare.stop()

    print()
    print(f"{'database':10} | {'route':30} | {'req/s':>8} | {'p99 ms':>7} | {'vs bare':>7} | "
          f"{'CPU/req':>8} | {'others':>7} | runs (req/s)")
    print("-" * 111)
    ok = True
    verdict = ""
    missed: list[str] = []
    bare_rps: dict[str, float] = {}
    for db, name, rs in rows:
        rps = statistics.median(r.rps for r in rs)
        p99 = statistics.median(r.p99_ms for r in rs)
        other = statistics.median(r.other_cpu for r in rs)
        cpu_us = statistics.median(r.server_us for r in rs)
        if name.startswith("bare"):
            bare_rps[db] = rps
        ratio = rps / bare_rps[db] if bare_rps.get(db) else float("nan")
        runs = ", ".join(f"{r.rps:.0f}" for r in rs)
        errs = sum(r.errors for r in rs)
        print(f"{db:10} | {name:30} | {rps:8.0f} | {p99:7.1f} | {ratio:6.0%} | {cpu_us:5.0f} us | {other:5.2f} c"
              f" | {runs}" + (f"  ({errs} errors)" if errs else ""))
        if errs:
            ok = False
        if db == "postgresql" and not name.startswith("bare") and "baseline" not in name:
            met = ratio >= TARGET_RATIO and p99 < TARGET_P99_MS
            ok = ok and met
            if not met:
                missed.append(name)
            verdict = f"target (PostgreSQL: every route >= {TARGET_RATIO:.0%} of bare, p99 < " \
                f"{TARGET_P99_MS:.0f} ms): " + ("met" if not missed else "NOT met by " + ", ".join(missed))
    print("-" * 111)
    print("CPU/req: server CPU per request; others: cores used meanwhile by processes other than the servers, "
          "the load generator and postgres (median)")
    if cpu_rows:
        print(f"in-process CPU per request (no server; medians of 7 runs of {args.inprocess} calls):")
        for db, tree, cpu in cpu_rows:
            print(f"  {db:10} {tree:13}  bare /ping {cpu['bare']:5.0f} us   /me {cpu['me']:5.0f} us one at a time,"
                  f" {cpu['me_concurrent']:5.0f} us {INPROCESS_CONCURRENCY} at a time")
    if verdict:
        print(verdict)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
