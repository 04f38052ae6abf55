"""Jobs through the app as it runs (tests/live.py: a uvicorn process, its worker thread on): many
creates at once, retries with one Idempotency-Key, a second API replica, and a crash mid-job."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

from tests.e2e.conftest import qa_jsonl
from tests.live import LiveApp, live, live_factory  # noqa: F401 - fixtures

QUICK = {"epochs": 1, "batch_size": 2, "max_steps": 1, "logging_steps": 1, "max_length": 64}
ENDED = ("Completed", "Failed", "Stopped")


def upload(app: LiveApp, h: dict[str, str]) -> str:
    r = app.http.post("/api/datasets", headers=h, files={"file": ("qa.jsonl", qa_jsonl())})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def jobs_of(app: LiveApp, h: dict[str, str]) -> list[dict[str, Any]]:
    return list(app.http.get("/api/training-jobs?limit=100", headers=h).json()["data"])


def all_ended(app: LiveApp, h: dict[str, str]) -> list[dict[str, Any]] | None:
    jobs = jobs_of(app, h)
    return jobs if all(j["status"] in ENDED for j in jobs) else None


def job_dir(data_dir: Path, job_name: str) -> Path:
    """The local backend's folder of a job (its backend name: the job's name and a piece of its id)."""
    prefix = job_name[:54].rstrip("-")
    pattern = re.compile(rf"{re.escape(prefix)}-[0-9a-f]{{8}}")
    (found,) = [p for p in (data_dir / "jobs").glob(f"{prefix}-*") if pattern.fullmatch(p.name)]
    return found


def processes_started(data_dir: Path, job_name: str) -> int:
    """train.py processes that ran for a job: each writes one "start" event to the job's log."""
    log = job_dir(data_dir, job_name) / "train.stdout"
    return sum(1 for line in log.read_text().splitlines() if line.startswith("{")
               and json.loads(line).get("event") == "start")


def submitted_events(app: LiveApp, h: dict[str, str], name: str) -> int:
    events = app.http.get(f"/api/training-job/{name}/events", headers=h).json()
    return sum(1 for e in events if e["message"].startswith("Submitted to the"))


def test_concurrent_creates_and_retries_start_one_process_per_job(live_factory) -> None:  # noqa: F811
    env = {"LLMTUNER_WORKER__MAX_CONCURRENT_LOCAL_JOBS": "2"}
    first, second = live_factory(env), live_factory(env)  # two API replicas, each with its worker
    h = first.register()
    ds = upload(first, h)
    answers: list[tuple[int, str]] = []

    def create(i: int) -> None:
        app = (first, second)[i % 2]
        headers = {**h, "Idempotency-Key": f"key-{i % 3}"} if i < 9 else h  # 3 keys x 3 tries, + 3
        r = app.http.post("/api/training-job", headers=headers, json={"dataset_id": ds, "hyperparameters": QUICK})
        answers.append((r.status_code, r.json().get("job_name", r.text)))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(12)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(code for code, _ in answers) == [201] * 12, answers
    assert len({name for _, name in answers}) == 6  # one job per key, one per unkeyed create
    jobs = first.wait_for(lambda: all_ended(first, h), timeout=600, what="all jobs to end")
    assert len(jobs) == 6
    for job in jobs:
        assert job["status"] == "Completed", job
        assert submitted_events(first, h, job["job_name"]) == 1
        assert processes_started(first.data_dir, job["job_name"]) == 1
    # Ended by two workers, some at once: the usage report counts each job once (app/usage/days.py).
    usage = second.http.get("/api/usage", headers=h).json()["training"]
    assert usage["count"] == 6 and usage["total"] == round(sum(j["actual_cost"] for j in jobs), 4)


def test_a_crash_mid_job_is_told_truthfully_after_the_restart(live: LiveApp) -> None:  # noqa: F811
    h = live.register()
    ds = upload(live, h)
    r = live.http.post("/api/training-job", headers=h, json={"dataset_id": ds, "hyperparameters": {
        **QUICK, "max_steps": 6, "logging_steps": 1}})
    assert r.status_code == 201, r.text
    name = r.json()["job_name"]
    live.wait_for(lambda: live.http.get(f"/api/training-job/{name}", headers=h).json()["secondary_status"]
                  == "Training", what="training to start")
    live.kill()  # SIGKILL the API; train.py runs on in its own session and finishes meanwhile
    handle = json.loads((job_dir(live.data_dir, name) / "handle.json").read_text())
    exit_file = Path(handle["dir"]) / "train.exit_code"
    live.wait_for(exit_file.is_file, timeout=300, what="train.py to finish while the API is down")
    ended_at = exit_file.stat().st_mtime
    live.start()
    done = live.wait_for(lambda: (b := live.http.get(f"/api/training-job/{name}", headers=h).json())["status"]
                         in ENDED and b, what="the restarted API to record the end")
    assert done["status"] == "Completed", done
    from datetime import datetime

    recorded_end = datetime.fromisoformat(done["ended_at"]).timestamp()
    assert abs(recorded_end - ended_at) < 3, (done["ended_at"], ended_at)  # the process's end, not the restart's
    assert done["billable_seconds"] <= int(ended_at - handle["started"]) + 2
    events = live.http.get(f"/api/training-job/{name}/events", headers=h).json()
    assert len(events) > 3 and all(datetime.fromisoformat(e["timestamp"]).timestamp() <= ended_at + 1
                                   for e in events), events[-3:]
    assert submitted_events(live, h, name) == 1
