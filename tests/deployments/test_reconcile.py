"""The endpoint state machine: with the fake backend (rules), then for real with serve.py."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.backends import process
from app.backends.base import Backends, EndpointSpec
from app.backends.local import LocalEndpointBackend
from app.deployments.service import backend_endpoint_name
from app.errors import BackendError
from app.worker import Worker
from tests.conftest import assert_error
from tests.deployments.conftest import FakeEndpointBackend, endpoint_row
from tests.jobs import kill_process_group

Headers = dict[str, str]


def wait_until(tick: Callable[[], None], check: Callable[[], Any], what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tick()
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def all_argv() -> list[bytes]:
    out = []
    for f in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            out.append(f.read_bytes())
        except OSError:  # the process ended meanwhile
            pass
    return out


def status_of(client: Any, headers: Headers, name: str) -> dict[str, Any]:
    r = client.get(f"/api/endpoint-status/{name}", headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def event_types(client: Any, headers: Headers, name: str) -> list[str]:
    return [e["type"] for e in client.get(f"/api/endpoint/{name}/events", headers=headers).json()]


class TestRulesWithFakeBackend:
    @pytest.fixture
    def backends(self, fake_backends: Backends) -> Backends:
        return fake_backends

    @pytest.fixture
    def alice(self, register: Callable[..., Headers]) -> Headers:
        return register("alice")

    @pytest.fixture
    def deploy(self, client: Any, alice: Headers, user_id: Callable[..., str],
               completed_job: Callable[..., Any]) -> Callable[[str], str]:
        def _deploy(model_name: str) -> str:
            job = completed_job(user_id(alice))
            r = client.post("/api/deploy-model", headers=alice, json={"job_name": job.job_name,
                                                                        "model_name": model_name})
            assert r.status_code == 202, r.text
            return f"{model_name}-endpoint"

        return _deploy

    def test_deploy_spec_and_in_service(self, deploy: Callable[[str], str], reconcile_once: Callable[..., None],
                                        fake_backend: FakeEndpointBackend, client: Any, alice: Headers,
                                        base_in_data_dir: Path, session_factory: Any) -> None:
        name = deploy("a")
        reconcile_once()
        spec = fake_backend.specs[0]
        # the backend's name: unique across users (the user's name and a piece of the endpoint's id)
        assert spec.endpoint_name == backend_endpoint_name(endpoint_row(session_factory, name))
        assert spec.endpoint_name.startswith(f"{name}-") and spec.model_key.endswith("/output/model.tar.gz")
        assert spec.base_model_source == str(base_in_data_dir) and spec.instance_type == "ml.g5.xlarge"
        reconcile_once()
        assert status_of(client, alice, name)["status"] == "Creating"
        fake_backend.set(name, "InService")
        reconcile_once()
        st = status_of(client, alice, name)
        assert st["status"] == "InService" and st["in_service_at"]
        assert event_types(client, alice, name) == ["status_change", "deploying", "status_change"]
        assert len(fake_backend.specs) == 1  # deployed once

    def test_deploy_error_and_load_failure(self, deploy: Callable[[str], str], reconcile_once: Callable[..., None],
                                           fake_backend: FakeEndpointBackend, client: Any, alice: Headers,
                                           user_id: Callable[..., str], completed_job: Callable[..., Any]) -> None:
        fake_backend.deploy_error = BackendError("no capacity for ml.g5.xlarge")
        name = deploy("a")
        reconcile_once()
        st = status_of(client, alice, name)
        assert st["status"] == "Failed" and st["failure_reason"] == "no capacity for ml.g5.xlarge"
        fake_backend.deploy_error = None
        other = deploy("b")
        reconcile_once()
        fake_backend.set(other, "Failed", "bad weights")
        reconcile_once()
        assert status_of(client, alice, other)["failure_reason"] == "bad weights"
        levels = [e["level"] for e in client.get(f"/api/endpoint/{other}/events", headers=alice).json()]
        assert levels[-1] == "error"
        # a Failed endpoint keeps its name until deleted
        job = completed_job(user_id(alice))
        body = {"job_name": job.job_name, "model_name": "b"}
        assert_error(client.post("/api/deploy-model", headers=alice, json=body), 409, "endpoint_exists")

    def test_local_endpoint_limit(self, deploy: Callable[[str], str], reconcile_once: Callable[..., None],
                                  fake_backend: FakeEndpointBackend, client: Any, alice: Headers,
                                  settings: Any) -> None:
        fake_backend.name = "local"
        settings.worker.max_concurrent_local_endpoints = 1
        first, second = deploy("first"), deploy("second")
        reconcile_once()
        reconcile_once()
        assert [s["name"] for s in fake_backend.live()] == [first]
        assert event_types(client, alice, second) == ["status_change", "waiting"]  # said once
        assert client.delete(f"/api/endpoint/{first}", headers=alice).status_code == 202
        reconcile_once()  # first: Deleted, which frees its slot for the next pass
        reconcile_once()
        assert [s["name"] for s in fake_backend.live()] == [second]

    def test_restart_once_after_api_restart(self, deploy: Callable[[str], str],
                                            reconcile_once: Callable[..., None], fake_backend: FakeEndpointBackend,
                                            client: Any, alice: Headers) -> None:
        name = deploy("a")
        reconcile_once()
        fake_backend.set(name, "InService")
        reconcile_once()
        fake_backend.servers.clear()  # the machine rebooted: the server is gone
        reconcile_once(first_pass=True)
        st = status_of(client, alice, name)
        assert st["status"] == "Creating" and "restarting" in event_types(client, alice, name)
        assert len(fake_backend.live()) == 1
        fake_backend.set(name, "InService")
        reconcile_once()
        assert status_of(client, alice, name)["status"] == "InService"
        fake_backend.set(name, "Failed", "crashed")  # dies while running: Failed, no restart
        reconcile_once()
        st = status_of(client, alice, name)
        assert st["status"] == "Failed" and st["failure_reason"] == "crashed"

    def test_failed_restart_is_failed(self, deploy: Callable[[str], str], reconcile_once: Callable[..., None],
                                      fake_backend: FakeEndpointBackend, client: Any, alice: Headers) -> None:
        name = deploy("a")
        reconcile_once()
        fake_backend.set(name, "InService")
        reconcile_once()
        fake_backend.servers.clear()
        fake_backend.initial_status = "Failed"
        reconcile_once(first_pass=True)
        reconcile_once(first_pass=True)  # one restart only, even on another first pass
        assert status_of(client, alice, name)["status"] == "Failed"
        assert len(fake_backend.specs) == 2


# Real model servers (training_scripts/serve.py) on the local backend --------------------------------



@pytest.fixture
def worker(app: Any, client: Any, session_factory: Any, settings: Any) -> Callable[[], Worker]:
    """A fresh Worker is what an API restart builds (first_pass=True on its first tick)."""
    return lambda: Worker(session_factory, app.state.store, app.state.backends, settings)


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_local_endpoint_lifecycle(client: Any, register: Callable[..., Headers], user_id: Callable[..., str],
                                  completed_job: Callable[..., Any], base_in_data_dir: Path,
                                  worker: Callable[[], Worker], session_factory: Any) -> None:
    alice, bob = register("alice"), register("bob")
    job = completed_job(user_id(alice))
    r = client.post("/api/deploy-model", headers=alice, json={"model_s3_uri": job.model_artifacts_uri,
                                                                "model_name": "tiny"})
    assert r.status_code == 202 and r.json()["deployment"]["status"] == "Creating", r.text
    # job_name deploys are covered with the fake backend; here one of a model that cannot load
    broken = completed_job(user_id(alice), tar_bytes=b"this is not a tarball")
    r = client.post("/api/deploy-model", headers=alice, json={"job_name": broken.job_name, "model_name": "broken"})
    assert r.status_code == 202, r.text
    invoke = {"endpoint_name": "tiny-endpoint", "input_text": "How do I reset my password?",
              "parameters": {"max_new_tokens": 8}}
    assert_error(client.post("/api/invoke-model", headers=alice, json=invoke), 409, "endpoint_not_in_service")

    w = worker()
    wait_until(w.tick, lambda: [status_of(client, alice, n)["status"] for n in ("tiny-endpoint", "broken-endpoint")]
               == ["InService", "Failed"], "InService (and Failed for the broken model)")
    st = status_of(client, alice, "broken-endpoint")  # serve.py's LOAD_ERROR line, not a generic exit
    assert "not a tar archive: model.tar.gz" in st["failure_reason"] and st["accrued_cost"] == 0.0
    assert [e for e in client.get("/api/endpoint/broken-endpoint/events", headers=alice).json()
            if e["level"] == "error"]
    st = status_of(client, alice, "tiny-endpoint")
    assert st["backend"] == "local" and st["failure_reason"] is None

    r = client.post("/api/invoke-model", headers=alice, json=invoke)
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    assert r.json()["status"] == "success" and res["generated_text"].startswith(invoke["input_text"])
    assert res["usage"]["prompt_tokens"] > 0 and 0 < res["usage"]["completion_tokens"] <= 8
    bad = {**invoke, "parameters": {"top_p": 2}}
    assert_error(client.post("/api/invoke-model", headers=alice, json=bad), 422, param="parameters.top_p")
    r = client.post("/api/v1/generate", headers=alice,
                    json={"prompt": "Hello", "model_id": "tiny-endpoint", "max_tokens": 6, "temperature": 0})
    assert r.status_code == 200, r.text
    assert not r.json()["text"].startswith("Hello") and r.json()["usage"]["completion_tokens"] <= 6

    for call in (lambda h: client.get("/api/endpoint-status/tiny-endpoint", headers=h),
                 lambda h: client.post("/api/invoke-model", headers=h, json=invoke),
                 lambda h: client.delete("/api/endpoint/tiny-endpoint", headers=h)):
        assert_error(call(bob), 404)

    # The model server itself asks for the endpoint's secret, which only the API holds (not in argv)
    handle = endpoint_row(session_factory, "tiny-endpoint").backend_handle
    server = f"http://127.0.0.1:{handle['port']}"
    for path in ("/ping", "/info"):
        assert httpx.get(server + path).status_code == 401
        assert httpx.get(server + path, headers={"X-LLMTuner-Token": "guess"}).status_code == 401
        assert httpx.get(server + path, headers={"X-LLMTuner-Token": handle["token"]}).status_code == 200
    assert httpx.post(server + "/invocations", json={"inputs": "Hello"}).status_code == 401
    assert not any(handle["token"].encode() in cmdline for cmdline in all_argv())  # `ps` does not show it

    cost = status_of(client, alice, "tiny-endpoint")["accrued_cost"]
    assert cost > 0
    pid = handle["pid"]
    r = client.delete("/api/endpoint/tiny-endpoint", headers=alice)
    assert r.status_code == 202 and r.json()["status"] == "Deleting"
    stopped_at = r.json()["accrued_cost"]
    assert stopped_at >= cost
    wait_until(w.tick, lambda: status_of(client, alice, "tiny-endpoint")["status"] == "Deleted", "Deleted", 30)
    assert pid_gone(pid)
    assert status_of(client, alice, "tiny-endpoint")["accrued_cost"] == stopped_at


def test_restart_recovery_never_in_service_while_dead(
        client: Any, register: Callable[..., Headers], user_id: Callable[..., str],
        completed_job: Callable[..., Any], base_in_data_dir: Path, worker: Callable[[], Worker],
        session_factory: Any) -> None:
    alice = register("alice")
    job = completed_job(user_id(alice))
    r = client.post("/api/deploy-model", headers=alice, json={"job_name": job.job_name, "model_name": "phoenix"})
    assert r.status_code == 202, r.text
    name = "phoenix-endpoint"
    w = worker()
    wait_until(w.tick, lambda: status_of(client, alice, name)["status"] == "InService", "InService")

    handle = endpoint_row(session_factory, name).backend_handle
    os.killpg(handle["pid"], signal.SIGKILL)  # the server dies while the API is down
    wait_until(lambda: None, lambda: not process.alive(handle), "the kill", 10)
    restarted = worker()
    restarted.tick()
    assert status_of(client, alice, name)["status"] == "Creating"
    assert "restarting" in event_types(client, alice, name)
    new_handle = endpoint_row(session_factory, name).backend_handle
    assert new_handle["pid"] != handle["pid"] and process.alive(new_handle)

    os.killpg(new_handle["pid"], signal.SIGKILL)  # the restarted one dies too: Failed, no second restart
    wait_until(lambda: None, lambda: not process.alive(new_handle), "the kill", 10)
    restarted.tick()
    st = status_of(client, alice, name)
    assert st["status"] == "Failed" and "killed" in st["failure_reason"]


def test_a_second_deploy_while_the_server_lives_returns_it(settings: Any, store: Any, base_in_data_dir: Path) -> None:
    """A worker killed between starting a server and recording it deploys again: no second server."""
    backend = LocalEndpointBackend(settings, store)
    spec = EndpointSpec(endpoint_name="twice-endpoint-0123abcd", user_id="u", model_uri="", model_key="",
                        base_model_source=str(base_in_data_dir), instance_type="local")
    first = backend.deploy(spec)
    second: dict[str, Any] = {}
    try:
        assert backend.deploy(spec) == first
        os.killpg(first["pid"], signal.SIGKILL)  # the server died: a restart's deploy replaces it
        wait_until(lambda: None, lambda: not process.alive(first), "the kill", 10)
        second = backend.deploy(spec)
        assert second["pid"] != first["pid"] and process.alive(second)
    finally:
        kill_process_group(first)
        kill_process_group(second)
