"""An endpoint through the app as it runs (tests/live.py): the API is SIGKILLed while the endpoint
is Creating and started again; the endpoint ends InService once, on one model server, and its
events tell what happened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.deployments.conftest import tiny_base  # noqa: F401 - fixture
from tests.jobs import TINY_ID
from tests.live import LiveApp, live, live_factory  # noqa: F401 - fixtures


def serve_processes(endpoints_dir: Path) -> list[int]:
    """serve.py processes (not their shell wrappers) running in a folder under endpoints_dir."""
    pids = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
            cwd = (d / "cwd").resolve()
        except OSError:  # ended meanwhile, or not ours
            continue
        if len(argv) > 1 and argv[1].endswith(b"serve.py") and cwd.is_relative_to(endpoints_dir):
            pids.append(int(d.name))
    return pids


def test_a_crash_mid_deploy_ends_in_service_once(live: LiveApp, tiny_base: Path) -> None:  # noqa: F811
    (live.data_dir / "base_models").mkdir(parents=True, exist_ok=True)
    (live.data_dir / "base_models" / "tiny-llama").symlink_to(tiny_base, target_is_directory=True)
    h = live.register()
    r = live.http.post("/api/deploy-model", headers=h, json={"model_name": "phoenix", "base_model": TINY_ID})
    assert r.status_code == 202, r.text
    name = r.json()["deployment"]["endpoint_name"]

    def events() -> list[dict[str, Any]]:
        return list(live.http.get(f"/api/endpoint/{name}/events", headers=h).json())

    endpoints = (live.data_dir / "endpoints").resolve()
    live.wait_for(lambda: any(e["type"] == "deploying" for e in events()) and serve_processes(endpoints),
                  what="the model server to start")
    first = live.http.get(f"/api/endpoint-status/{name}", headers=h).json()
    assert first["status"] == "Creating", first
    live.kill()  # SIGKILL the API mid-deploy; the model server runs on in its own session
    live.start()
    st = live.wait_for(lambda: (s := live.http.get(f"/api/endpoint-status/{name}", headers=h).json())["status"]
                       in ("InService", "Failed") and s, what="the endpoint to settle")
    assert st["status"] == "InService", st
    assert len(serve_processes(endpoints)) == 1  # the server that was loading, not a second one
    evs = events()
    types = [e["type"] for e in evs]
    assert types.count("deploying") == 1 and "restarting" not in types, types
    statuses = [e["data"].get("status") for e in evs if e["type"] == "status_change"]
    assert statuses == ["Creating", "InService"], statuses
    r = live.http.post("/api/invoke-model", headers=h, json={"endpoint_name": name, "input_text": "Hello",
                                                              "parameters": {"max_new_tokens": 2}})
    assert r.status_code == 200, r.text
    assert live.http.delete(f"/api/endpoint/{name}", headers=h).status_code == 202
    live.wait_for(lambda: not serve_processes(endpoints), what="the model server to stop")
