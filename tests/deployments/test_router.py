"""The deployment API with a fake endpoint backend: shapes, validation, tenancy, state rules, cost."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from app.auth.models import User
from app.backends.base import Backends
from app.db import utcnow
from app.deployments.models import Endpoint
from app.deployments.service import accrued_cost
from app.errors import GatewayTimeout
from app.registry.models import RegisteredModel
from tests.conftest import assert_error
from tests.deployments.conftest import FakeEndpointBackend, endpoint_row

Headers = dict[str, str]


@pytest.fixture
def backends(fake_backends: Backends) -> Backends:
    return fake_backends


@pytest.fixture
def alice(register: Callable[..., Headers]) -> Headers:
    return register("alice")


@pytest.fixture
def bob(register: Callable[..., Headers]) -> Headers:
    return register("bob")


@pytest.fixture
def deploy(client: Any, alice: Headers, user_id: Callable[[Headers], str],
           completed_job: Callable[..., Any]) -> Callable[..., Any]:
    """Deploy a fresh Completed job of alice's (or `body` as given) and return the response."""

    def _deploy(model_name: str = "my-model", headers: Headers | None = None, **body: Any) -> Any:
        if not ({"job_name", "model_s3_uri", "model_id"} & body.keys()):
            body["job_name"] = completed_job(user_id(headers or alice)).job_name
        return client.post("/api/deploy-model", headers=headers or alice, json={"model_name": model_name, **body})

    return _deploy


@pytest.fixture
def in_service(deploy: Callable[..., Any], fake_backend: FakeEndpointBackend,
               reconcile_once: Callable[..., None]) -> Callable[..., str]:
    def _make(model_name: str = "my-model", **body: Any) -> str:
        r = deploy(model_name, **body)
        assert r.status_code == 202, r.text
        name = str(r.json()["deployment"]["endpoint_name"])
        reconcile_once()
        fake_backend.set(name, "InService")
        reconcile_once()
        return name

    return _make


def register_model(session_factory: Any, uid: str, job: Any, name: str = "support-bot", version: int = 1) -> str:
    with session_factory() as s:
        m = RegisteredModel(user_id=uid, model_name=name, version=version, job_id=job.id, job_name=job.job_name,
                            base_model=job.base_model, model_uri=job.model_artifacts_uri)
        s.add(m)
        s.commit()
        return m.id


class TestDeploy:
    def test_by_job_name_answers_seed_shape(self, deploy: Callable[..., Any], client: Any, alice: Headers) -> None:
        r = deploy("my-fine-tuned-llama2", instance_type="ml.g5.xlarge")
        assert r.status_code == 202, r.text
        assert r.json() == {"message": "Model deployment initiated", "deployment": {
            "endpoint_name": "my-fine-tuned-llama2-endpoint", "status": "Creating",
            "instance_type": "ml.g5.xlarge", "estimated_cost_per_hour": 1.21}}
        st = client.get("/api/endpoint-status/my-fine-tuned-llama2-endpoint", headers=alice).json()
        assert st["status"] == "Creating" and st["backend"] == "fake" and st["currency"] == "USD"
        assert st["job_name"].startswith("llm-tune-test") and st["model_uri"].startswith("local://users/")
        assert st["accrued_cost"] == 0 and st["failure_reason"] is None and st["in_service_at"] is None
        ev = client.get("/api/endpoint/my-fine-tuned-llama2-endpoint/events", headers=alice).json()
        assert [e["data"]["status"] for e in ev] == ["Creating"]

    def test_by_model_s3_uri_links_the_job(self, deploy: Callable[..., Any], client: Any, alice: Headers,
                                           user_id: Callable[..., str], completed_job: Callable[..., Any]) -> None:
        job = completed_job(user_id(alice))
        r = deploy("by-uri", model_s3_uri=job.model_artifacts_uri)
        assert r.status_code == 202, r.text
        st = client.get("/api/endpoint-status/by-uri-endpoint", headers=alice).json()
        assert st["job_name"] == job.job_name and st["model_uri"] == job.model_artifacts_uri

    def test_by_registered_model(self, deploy: Callable[..., Any], client: Any, alice: Headers,
                                 user_id: Callable[..., str], completed_job: Callable[..., Any],
                                 session_factory: Any) -> None:
        uid = user_id(alice)
        model_id = register_model(session_factory, uid, completed_job(uid))
        r = deploy("registered", model_id=model_id)
        assert r.status_code == 202, r.text
        assert client.get("/api/endpoint-status/registered-endpoint", headers=alice).json()[
            "registered_model_id"] == model_id

    @pytest.mark.parametrize("sources", [{}, {"job_name": "a", "model_s3_uri": "local://x"}])
    def test_exactly_one_source(self, client: Any, alice: Headers, sources: dict[str, str]) -> None:
        r = client.post("/api/deploy-model", headers=alice, json={"model_name": "m", **sources})
        assert "exactly one" in assert_error(r, 422, "validation_error")["message"]

    @pytest.mark.parametrize("name", ["-lead", "trail-", "under_score", "sp ace", "x" * 51, ""])
    def test_model_name_rules(self, deploy: Callable[..., Any], name: str) -> None:
        assert_error(deploy(name), 422, "validation_error", "model_name")

    def test_instance_types_and_prices(self, deploy: Callable[..., Any]) -> None:
        assert_error(deploy("a", instance_type="ml.nope"), 422, "unknown_instance_type", "instance_type")
        assert_error(deploy("a", initial_instance_count=0), 422, "validation_error", "initial_instance_count")
        assert deploy("b", instance_type="local").json()["deployment"]["estimated_cost_per_hour"] == 0.0
        assert deploy("c", instance_type="ml.p4d.24xlarge").json()["deployment"]["estimated_cost_per_hour"] == 37.69
        r = deploy("d", initial_instance_count=2)
        assert r.json()["deployment"]["estimated_cost_per_hour"] == 2.42

    def test_job_states(self, deploy: Callable[..., Any], alice: Headers, user_id: Callable[..., str],
                        completed_job: Callable[..., Any]) -> None:
        job = completed_job(user_id(alice), status="InProgress")
        assert_error(deploy("x", job_name=job.job_name), 409, "job_not_completed", "job_name")
        assert_error(deploy("x", job_name="llm-tune-nobody"), 404, param="job_name")

    def test_names_are_per_user(self, deploy: Callable[..., Any], client: Any, alice: Headers, bob: Headers,
                                user_id: Callable[..., str], completed_job: Callable[..., Any],
                                reconcile_once: Callable[..., None], fake_backend: FakeEndpointBackend) -> None:
        assert deploy("taken").status_code == 202
        assert_error(deploy("taken"), 409, "endpoint_exists", "model_name")
        bobs = completed_job(user_id(bob))
        r = deploy("taken", headers=bob, job_name=bobs.job_name)  # alice's name is neither told nor in the way
        assert r.status_code == 202, r.text
        assert r.json()["deployment"]["endpoint_name"] == "taken-endpoint"
        mine = client.get("/api/endpoint-status/taken-endpoint", headers=alice).json()
        theirs = client.get("/api/endpoint-status/taken-endpoint", headers=bob).json()
        assert mine["model_uri"] != theirs["model_uri"]
        reconcile_once()  # the backends get names unique across users
        names = [s.endpoint_name for s in fake_backend.specs]
        assert len(set(names)) == 2 and all(n.startswith("taken-endpoint-") and len(n) <= 63 for n in names)

    def test_a_deleted_endpoint_of_another_user_is_untouched(
            self, in_service: Callable[..., str], deploy: Callable[..., Any], client: Any, alice: Headers,
            bob: Headers, user_id: Callable[..., str], completed_job: Callable[..., Any],
            reconcile_once: Callable[..., None], session_factory: Any) -> None:
        name = in_service("gone")
        assert client.delete(f"/api/endpoint/{name}", headers=alice).status_code == 202
        reconcile_once()
        old = endpoint_row(session_factory, name)
        assert old.status == "Deleted"
        bobs = completed_job(user_id(bob))
        assert deploy("gone", headers=bob, job_name=bobs.job_name).status_code == 202
        with session_factory() as s:  # alice's row keeps its name: bob's deploy did not rename it
            kept = s.get(Endpoint, old.id)
            assert kept is not None and kept.endpoint_name == name and kept.status == "Deleted"
        st = client.get(f"/api/endpoint-status/{name}", headers=alice).json()
        assert st["status"] == "Deleted"
        assert client.get(f"/api/endpoint-status/{name}", headers=bob).json()["status"] == "Creating"
        # alice's own re-deploy of her deleted name still works (her old row is renamed, not bob's)
        assert deploy("gone").status_code == 202
        with session_factory() as s:
            rows = {e.user_id: e for e in s.scalars(select(Endpoint).where(Endpoint.endpoint_name == name))}
            assert set(rows) == {user_id(alice), user_id(bob)}
            renamed = s.get(Endpoint, old.id)
            assert renamed is not None and renamed.endpoint_name.startswith(f"{name}~")

    def test_tenancy_of_sources(self, deploy: Callable[..., Any], alice: Headers, bob: Headers,
                                user_id: Callable[..., str], completed_job: Callable[..., Any],
                                session_factory: Any) -> None:
        uid = user_id(alice)
        job = completed_job(uid)
        model_id = register_model(session_factory, uid, job)
        key_tail = f"models/{job.job_name}/output/model.tar.gz"
        for body in ({"job_name": job.job_name}, {"model_s3_uri": job.model_artifacts_uri}, {"model_id": model_id},
                     {"model_s3_uri": f"s3://another-bucket/users/{user_id(bob)}/{key_tail}"},
                     {"model_s3_uri": f"local://users/{'0' * 8}-0000-0000-0000-{'0' * 12}/{key_tail}"},
                     {"model_s3_uri": f"local://users/{uid}/../{key_tail}"}, {"model_s3_uri": "not a uri"}):
            assert_error(deploy("stolen", headers=bob, **body), 404)

    def test_idempotency_key(self, client: Any, alice: Headers, user_id: Callable[..., str],
                             completed_job: Callable[..., Any]) -> None:
        body = {"job_name": completed_job(user_id(alice)).job_name, "model_name": "idem"}
        h = {**alice, "Idempotency-Key": "k1"}
        first = client.post("/api/deploy-model", headers=h, json=body)
        again = client.post("/api/deploy-model", headers=h, json=body)
        assert first.status_code == again.status_code == 202 and first.json() == again.json()
        assert len(client.get("/api/endpoints", headers=alice).json()["data"]) == 1
        assert_error(client.post("/api/deploy-model", headers=h, json={**body, "model_name": "other"}), 409,
                     "idempotency_key_reused")


class TestStatusListDelete:
    def test_other_users_endpoint_is_404(self, in_service: Callable[..., str], client: Any, bob: Headers) -> None:
        name = in_service()
        assert_error(client.get(f"/api/endpoint-status/{name}", headers=bob), 404)
        assert_error(client.get(f"/api/endpoint/{name}/events", headers=bob), 404)
        assert_error(client.delete(f"/api/endpoint/{name}", headers=bob), 404)
        assert client.get("/api/endpoints", headers=bob).json()["data"] == []

    def test_list_filters_and_pages(self, deploy: Callable[..., Any], in_service: Callable[..., str], client: Any,
                                    alice: Headers) -> None:
        in_service("one")
        for n in ("two", "three"):
            assert deploy(n).status_code == 202
        page = client.get("/api/endpoints?limit=2", headers=alice).json()
        assert [e["endpoint_name"] for e in page["data"]] == ["three-endpoint", "two-endpoint"]
        assert page["has_more"] is True
        rest = client.get(f"/api/endpoints?limit=2&after={page['next_cursor']}", headers=alice).json()
        assert [e["endpoint_name"] for e in rest["data"]] == ["one-endpoint"] and rest["has_more"] is False
        only = client.get("/api/endpoints?status=InService", headers=alice).json()["data"]
        assert [e["endpoint_name"] for e in only] == ["one-endpoint"]
        assert_error(client.get("/api/endpoints?status=Bogus", headers=alice), 422, param="status")

    def test_delete_stops_cost_and_frees_the_name(self, in_service: Callable[..., str], client: Any,
                                                  alice: Headers, reconcile_once: Callable[..., None],
                                                  fake_backend: FakeEndpointBackend, session_factory: Any) -> None:
        name = in_service("gone")
        with session_factory() as s:  # an hour in service
            s.execute(update(Endpoint).where(Endpoint.endpoint_name == name)
                      .values(accrual_started_at=utcnow() - timedelta(hours=1)))
            s.commit()
        r = client.delete(f"/api/endpoint/{name}", headers=alice)
        assert r.status_code == 202 and r.json()["status"] == "Deleting"
        cost = r.json()["accrued_cost"]
        assert cost == pytest.approx(1.21, rel=1e-3)
        assert client.delete(f"/api/endpoint/{name}", headers=alice).status_code == 202  # still Deleting
        reconcile_once()
        st = client.get(f"/api/endpoint-status/{name}", headers=alice).json()
        assert st["status"] == "Deleted" and st["deleted_at"] and st["accrued_cost"] == cost
        assert fake_backend.live() == []
        assert_error(client.delete(f"/api/endpoint/{name}", headers=alice), 404)
        assert client.get("/api/endpoints", headers=alice).json()["data"] == []
        # the name is free again; the old row is kept (renamed) for usage
        assert in_service("gone") == name
        rows = client.get("/api/endpoints?include_deleted=true", headers=alice).json()["data"]
        assert [e["status"] for e in rows] == ["InService", "Deleted"]
        assert rows[1]["endpoint_name"].startswith(f"{name}~") and rows[1]["accrued_cost"] == cost
        types = [e["type"] for e in client.get(f"/api/endpoint/{name}/events", headers=alice).json()]
        assert types.count("status_change") == 2  # the new endpoint: Creating, InService

    def test_delete_before_the_worker_started_it(self, deploy: Callable[..., Any], client: Any, alice: Headers,
                                                 reconcile_once: Callable[..., None],
                                                 fake_backend: FakeEndpointBackend) -> None:
        assert deploy("early").status_code == 202
        assert client.delete("/api/endpoint/early-endpoint", headers=alice).status_code == 202
        reconcile_once()
        assert client.get("/api/endpoint-status/early-endpoint", headers=alice).json()["status"] == "Deleted"
        assert fake_backend.servers == {}


class TestInvoke:
    def test_success_shape(self, in_service: Callable[..., str], client: Any, alice: Headers,
                           fake_backend: FakeEndpointBackend) -> None:
        name = in_service()
        params = {"max_new_tokens": 8, "temperature": 0.5, "top_p": 0.9, "top_k": 5, "do_sample": True,
                  "repetition_penalty": 1.1, "stop": ["\n"], "seed": 3}
        r = client.post("/api/invoke-model", headers=alice,
                        json={"endpoint_name": name, "input_text": "Hello", "parameters": params})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "success" and set(body) == {"result", "status"}
        res = body["result"]
        assert res["input_text"] == "Hello" and res["endpoint_name"] == name
        assert res["generated_text"] == "Hello and then the answer" and res["timestamp"].endswith("Z")
        assert res["usage"] == {"prompt_tokens": 5, "completion_tokens": 4} and res["parameters"] == params
        assert fake_backend.invocations[-1]["payload"] == {"inputs": "Hello", "parameters": params}

    @pytest.mark.parametrize(("params", "param"), [
        ({"top_p": 0}, "parameters.top_p"), ({"top_p": 1.5}, "parameters.top_p"),
        ({"temperature": -1}, "parameters.temperature"), ({"max_new_tokens": 0}, "parameters.max_new_tokens"),
        ({"max_new_tokens": True}, "parameters.max_new_tokens"), ({"top_k": -1}, "parameters.top_k"),
        ({"repetition_penalty": 0}, "parameters.repetition_penalty"), ({"seed": -1}, "parameters.seed"),
        ({"do_sample": "yes"}, "parameters.do_sample"), ({"bogus": 1}, "parameters.bogus"),
    ])
    def test_bad_parameters_are_named(self, client: Any, alice: Headers, params: dict[str, Any],
                                      param: str) -> None:
        r = client.post("/api/invoke-model", headers=alice,
                        json={"endpoint_name": "x-endpoint", "input_text": "Hi", "parameters": params})
        assert_error(r, 422, "validation_error", param)

    def test_not_in_service_is_409(self, deploy: Callable[..., Any], client: Any, alice: Headers) -> None:
        assert deploy("slow").status_code == 202
        r = client.post("/api/invoke-model", headers=alice, json={"endpoint_name": "slow-endpoint", "input_text": "x"})
        assert_error(r, 409, "endpoint_not_in_service", "endpoint_name")

    def test_other_users_endpoint_is_404(self, in_service: Callable[..., str], client: Any, bob: Headers) -> None:
        name = in_service()
        r = client.post("/api/invoke-model", headers=bob, json={"endpoint_name": name, "input_text": "x"})
        assert_error(r, 404)
        r = client.post("/api/v1/generate", headers=bob, json={"model_id": name, "prompt": "x"})
        assert_error(r, 404, "model_not_deployed")

    def test_timeout_is_504(self, in_service: Callable[..., str], client: Any, alice: Headers,
                            fake_backend: FakeEndpointBackend) -> None:
        name = in_service()
        fake_backend.invoke_error = GatewayTimeout("too slow", code="generation_timeout")
        r = client.post("/api/invoke-model", headers=alice, json={"endpoint_name": name, "input_text": "x"})
        assert_error(r, 504, "generation_timeout")

    def test_backend_ignoring_the_timeout_is_504(self, in_service: Callable[..., str], client: Any, alice: Headers,
                                                 fake_backend: FakeEndpointBackend, settings: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
        name = in_service()
        monkeypatch.setattr("app.deployments.service.INVOKE_GRACE_SECONDS", 0.0)
        settings.invoke_timeout_seconds = 0.2
        fake_backend.invoke_delay = 1.0
        r = client.post("/api/invoke-model", headers=alice, json={"endpoint_name": name, "input_text": "x"})
        assert_error(r, 504, "generation_timeout")


class TestGenerate:
    def test_by_endpoint_name_returns_the_completion_only(self, in_service: Callable[..., str], client: Any,
                                                          alice: Headers, fake_backend: FakeEndpointBackend) -> None:
        name = in_service()
        r = client.post("/api/v1/generate", headers=alice, json={"prompt": "How?", "model_id": name})
        assert r.status_code == 200, r.text
        assert r.json() == {"text": " and then the answer", "model_id": name, "endpoint_name": name,
                            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}}
        sent = fake_backend.invocations[-1]["payload"]["parameters"]
        assert sent == {"max_new_tokens": 100, "temperature": 0.7, "return_full_text": False}

    def test_by_registered_model(self, in_service: Callable[..., str], client: Any, alice: Headers,
                                 user_id: Callable[..., str], completed_job: Callable[..., Any],
                                 session_factory: Any) -> None:
        uid = user_id(alice)
        job = completed_job(uid)
        model_id = register_model(session_factory, uid, job, "customer-support")
        in_service("deployed-by-job", job_name=job.job_name)
        for ref in (model_id, "customer-support", "deployed-by-job"):
            r = client.post("/api/v1/generate", headers=alice, json={"prompt": "Hi", "model_id": ref, "max_tokens": 5})
            assert r.status_code == 200, r.text
            assert r.json()["endpoint_name"] == "deployed-by-job-endpoint"
        # a newer version that is not deployed: the name means the latest version
        register_model(session_factory, uid, completed_job(uid), "customer-support", version=2)
        r = client.post("/api/v1/generate", headers=alice, json={"prompt": "Hi", "model_id": "customer-support"})
        assert_error(r, 404, "model_not_deployed", "model_id")

    def test_not_deployed_or_not_ready(self, deploy: Callable[..., Any], client: Any, alice: Headers) -> None:
        assert_error(client.post("/api/v1/generate", headers=alice, json={"prompt": "x", "model_id": "nothing"}),
                     404, "model_not_deployed")
        assert deploy("warming").status_code == 202
        r = client.post("/api/v1/generate", headers=alice, json={"prompt": "x", "model_id": "warming-endpoint"})
        assert_error(r, 409, "endpoint_not_in_service")
        r = client.post("/api/v1/generate", headers=alice, json={"prompt": "x", "model_id": "m", "max_tokens": 0})
        assert_error(r, 422, param="max_tokens")


def test_accrued_cost_counts_in_service_time_only(session_factory: Any, in_service: Callable[..., str]) -> None:
    ep = endpoint_row(session_factory, in_service())
    start = ep.accrual_started_at
    assert start is not None
    assert accrued_cost(ep, start + timedelta(hours=2)) == pytest.approx(2.42)
    ep.status = "Failed"
    assert accrued_cost(ep, start + timedelta(hours=2)) == 0.0


def test_a_live_endpoint_is_not_rewritten_on_every_pass(session_factory: Any, in_service: Callable[..., str],
                                                        reconcile_once: Callable[..., None],
                                                        fake_backend: FakeEndpointBackend) -> None:
    """A pass that finds an endpoint still InService writes nothing: its cost accrues from
    accrual_started_at, and a write would move its user's data version (the polled reads' cache).
    A backend that reports the same handle details on every pass (SageMaker's components) is saved once."""
    name = in_service()
    fake_backend.servers[endpoint_row(session_factory, name).backend_handle["server"]]["handle_update"] = {
        "components": {"__base__": "base-ic"}}
    reconcile_once()
    ep = endpoint_row(session_factory, name)
    assert ep.backend_handle["components"] == {"__base__": "base-ic"}

    def version() -> int:
        with session_factory() as s:
            return int(s.scalar(select(User.data_version).where(User.id == ep.user_id)) or 0)

    before = version()
    reconcile_once()
    reconcile_once()
    after = endpoint_row(session_factory, ep.endpoint_name)
    assert version() == before
    assert (after.accrual_started_at, after.accrued_seconds) == (ep.accrual_started_at, ep.accrued_seconds)
    assert accrued_cost(after, ep.accrual_started_at + timedelta(hours=1)) == pytest.approx(1.21)
