"""Base-model endpoints with adapters, on the fake backend: deploy, attach and detach on a running
endpoint, base-model mismatch, tenancy, and what the model server is asked for per request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import update

from app.backends.base import Backends
from app.training.models import TrainingJob
from tests.conftest import assert_error
from tests.deployments.conftest import FakeEndpointBackend
from tests.jobs import TINY_ID

Headers = dict[str, str]


@pytest.fixture
def backends(fake_backends: Backends) -> Backends:
    return fake_backends


@pytest.fixture
def alice(register: Callable[..., Headers]) -> Headers:
    return register("alice")


@pytest.fixture
def job(completed_job: Callable[..., Any], user_id: Callable[..., str], alice: Headers) -> Callable[..., str]:
    return lambda: str(completed_job(user_id(alice)).job_name)


@pytest.fixture
def base_endpoint(client: Any, alice: Headers, job: Callable[..., str], reconcile_once: Callable[..., None],
                  fake_backend: FakeEndpointBackend) -> dict[str, Any]:
    jobs = [job(), job()]
    r = client.post("/api/deploy-model", headers=alice, json={
        "model_name": "shared", "base_model": TINY_ID,
        "adapters": [{"job_name": jobs[0], "name": "support"}, {"job_name": jobs[1]}]})
    assert r.status_code == 202, r.text
    reconcile_once()
    fake_backend.set("shared-endpoint", "InService")
    reconcile_once()
    return {"jobs": jobs}


def test_deploy_a_base_model_with_adapters(client: Any, alice: Headers, base_endpoint: dict[str, Any],
                                           fake_backend: FakeEndpointBackend) -> None:
    spec = fake_backend.specs[-1]
    assert spec.model_key == "" and spec.base_model_source and set(spec.adapters) == {
        "support", base_endpoint["jobs"][1]}
    assert all(k.endswith("model.tar.gz") for k in spec.adapters.values())
    st = client.get("/api/endpoint-status/shared-endpoint", headers=alice).json()
    assert st["status"] == "InService" and st["base_model"] == TINY_ID and st["model_uri"] == f"base-model:{TINY_ID}"
    assert [a["name"] for a in st["adapters"]] == ["support", base_endpoint["jobs"][1]]
    assert st["adapters"][0]["job_name"] == base_endpoint["jobs"][0]


def test_attach_and_detach_reach_the_running_server(client: Any, alice: Headers, base_endpoint: dict[str, Any],
                                                    job: Callable[..., str],
                                                    fake_backend: FakeEndpointBackend) -> None:
    name = job()
    r = client.post("/api/endpoint/shared-endpoint/adapters", headers=alice, json={"job_name": name})
    assert r.status_code == 201 and r.json()["status"] == "attached", r.text
    server = fake_backend.live()[0]
    assert name in server["adapters"] and len(fake_backend.specs) == 1  # told at once, not redeployed
    assert_error(client.post("/api/endpoint/shared-endpoint/adapters", headers=alice, json={"job_name": name}),
                 409, "adapter_exists", "name")
    r = client.delete(f"/api/endpoint/shared-endpoint/adapters/{name}", headers=alice)
    assert r.status_code == 200 and r.json()["status"] == "detached" and name not in server["adapters"]
    assert_error(client.delete(f"/api/endpoint/shared-endpoint/adapters/{name}", headers=alice), 404,
                 "adapter_not_found")
    names = [a["name"] for a in client.get("/api/endpoint/shared-endpoint/adapters", headers=alice).json()]
    assert names == ["support", base_endpoint["jobs"][1]]


def test_requests_name_the_adapter_or_the_base(client: Any, alice: Headers, base_endpoint: dict[str, Any],
                                               fake_backend: FakeEndpointBackend) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    for model, adapter in (("support", "support"), ("shared", "__base__"), ("shared-endpoint", "__base__")):
        r = client.post("/v1/chat/completions", headers=alice, json={"model": model, "messages": msgs})
        assert r.status_code == 200, r.text
        assert fake_backend.invocations[-1]["payload"]["adapter"] == adapter
    r = client.post("/api/invoke-model", headers=alice, json={"endpoint_name": "shared-endpoint", "input_text": "x"})
    assert r.status_code == 200 and fake_backend.invocations[-1]["payload"]["adapter"] == "__base__"
    ids = [m["id"] for m in client.get("/v1/models", headers=alice).json()["data"]]
    assert ids == ["shared", "support", base_endpoint["jobs"][1]]


def test_an_adapter_of_another_base_is_422_naming_it(client: Any, alice: Headers, job: Callable[..., str],
                                                     session_factory: Any, base_endpoint: dict[str, Any]) -> None:
    other = job()
    with session_factory() as s:
        s.execute(update(TrainingJob).where(TrainingJob.job_name == other).values(base_model="gpt2"))
        s.commit()
    r = client.post("/api/deploy-model", headers=alice, json={
        "model_name": "two", "base_model": TINY_ID, "adapters": [{"job_name": job()}, {"job_name": other}]})
    err = assert_error(r, 422, "base_model_mismatch", "adapters[1].job_name")
    assert other in err["message"] and "gpt2" in err["message"]
    assert_error(client.post("/api/endpoint/shared-endpoint/adapters", headers=alice, json={"job_name": other}),
                 422, "base_model_mismatch", "job_name")


def test_bad_deploy_requests_and_tenancy(client: Any, alice: Headers, register: Callable[..., Headers],
                                         job: Callable[..., str], base_endpoint: dict[str, Any]) -> None:
    name = job()
    assert_error(client.post("/api/deploy-model", headers=alice, json={
        "model_name": "x", "job_name": name, "adapters": [{"job_name": name}]}), 422)
    assert_error(client.post("/api/deploy-model", headers=alice, json={"model_name": "x", "base_model": "nope"}),
                 422, "unknown_base_model", "base_model")
    assert_error(client.post("/api/deploy-model", headers=alice, json={
        "model_name": "x", "base_model": TINY_ID, "adapters": [{"job_name": name}, {"job_name": name}]}),
        422, "duplicate_adapter", "adapters[1].name")
    bob = register("bob")
    assert_error(client.post("/api/deploy-model", headers=bob, json={
        "model_name": "x", "base_model": TINY_ID, "adapters": [{"job_name": name}]}), 404, param="adapters[0].job_name")
    assert_error(client.post("/api/endpoint/shared-endpoint/adapters", headers=bob, json={"job_name": name}), 404)
    assert_error(client.delete("/api/endpoint/shared-endpoint/adapters/support", headers=bob), 404)
    r = client.post("/api/deploy-model", headers=alice, json={"model_name": "single", "job_name": name})
    assert r.status_code == 202
    assert_error(client.post("/api/endpoint/single-endpoint/adapters", headers=alice, json={"job_name": job()}),
                 409, "not_a_base_model_endpoint")
