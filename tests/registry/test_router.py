from __future__ import annotations

import pytest

from app.auth.models import User
from app.errors import NotFound
from app.registry.service import resolve_model
from tests.conftest import assert_error


@pytest.fixture
def alice(register, user_id, job_row):
    headers = register("alice")
    uid = user_id(headers)
    job_row(uid, "llm-tune-alice-tiny-1")
    return headers, uid


def save(client, headers, **body):
    return client.post("/api/models", headers=headers,
                       json={"job_name": "llm-tune-alice-tiny-1", "model_name": "support-bot", **body})


class TestCreateModel:
    def test_register_completed_job(self, client, alice):
        headers, uid = alice
        r = save(client, headers, description="FAQ bot", tags=["faq", "support", "faq"])
        assert r.status_code == 201, r.text
        m = r.json()
        assert m["version"] == 1 and m["model_name"] == "support-bot" and m["job_name"] == "llm-tune-alice-tiny-1"
        assert m["tags"] == ["faq", "support"] and m["description"] == "FAQ bot"
        assert m["base_model"] == "llmtuner/tiny-llama"
        assert m["model_uri"].endswith("/llm-tune-alice-tiny-1/output/model.tar.gz") and m["model_id"]

    def test_second_save_of_a_name_is_version_2(self, client, alice, job_row):
        headers, uid = alice
        job_row(uid, "llm-tune-alice-tiny-2")
        v1 = save(client, headers).json()
        v2 = save(client, headers, job_name="llm-tune-alice-tiny-2").json()
        other = save(client, headers, model_name="other-bot").json()
        assert (v1["version"], v2["version"], other["version"]) == (1, 2, 1)
        assert v1["model_id"] != v2["model_id"]

    def test_job_not_completed_is_409(self, client, alice, job_row):
        headers, uid = alice
        job_row(uid, "llm-tune-alice-running", status="InProgress")
        assert_error(save(client, headers, job_name="llm-tune-alice-running"), 409, "job_not_completed", "job_name")

    def test_unknown_job_is_404(self, client, alice):
        headers, _ = alice
        assert_error(save(client, headers, job_name="nope"), 404, "job_not_found", "job_name")

    def test_bad_name_and_tags_are_422(self, client, alice):
        headers, _ = alice
        assert_error(save(client, headers, model_name="bad name!"), 422, param="model_name")
        assert_error(save(client, headers, tags=['a"b']), 422, param="tags")

    def test_idempotency_key_returns_the_first_model(self, client, alice):
        headers, _ = alice
        h = {**headers, "Idempotency-Key": "k1"}
        a = client.post("/api/models", headers=h, json={"job_name": "llm-tune-alice-tiny-1", "model_name": "m"})
        b = client.post("/api/models", headers=h, json={"job_name": "llm-tune-alice-tiny-1", "model_name": "m"})
        assert a.status_code == b.status_code == 201 and a.json() == b.json()
        assert len(client.get("/api/models", headers=headers).json()["data"]) == 1


class TestListAndGet:
    def test_tag_and_name_filters_and_pages(self, client, alice):
        headers, _ = alice
        save(client, headers, tags=["faq", "v_1"])
        save(client, headers, tags=["chat"])
        save(client, headers, model_name="other", tags=["faq"])
        r = client.get("/api/models", headers=headers, params={"tag": "faq"}).json()
        assert sorted((m["model_name"], m["version"]) for m in r["data"]) == [("other", 1), ("support-bot", 1)]
        assert client.get("/api/models", headers=headers, params={"tag": "fa"}).json()["data"] == []
        assert client.get("/api/models", headers=headers, params={"tag": "v%1"}).json()["data"] == []
        assert len(client.get("/api/models", headers=headers, params={"tag": "v_1"}).json()["data"]) == 1
        named = client.get("/api/models", headers=headers, params={"model_name": "support-bot"}).json()["data"]
        assert [m["version"] for m in named] == [2, 1]
        page = client.get("/api/models", headers=headers, params={"limit": 2}).json()
        assert len(page["data"]) == 2 and page["has_more"] and page["next_cursor"]
        rest = client.get("/api/models", headers=headers, params={"limit": 2, "after": page["next_cursor"]}).json()
        assert len(rest["data"]) == 1 and not rest["has_more"]

    def test_get_and_delete(self, client, alice):
        headers, _ = alice
        m = save(client, headers).json()
        assert client.get(f"/api/models/{m['model_id']}", headers=headers).json() == m
        assert client.delete(f"/api/models/{m['model_id']}", headers=headers).status_code == 204
        assert_error(client.get(f"/api/models/{m['model_id']}", headers=headers), 404, "model_not_found")


class TestTenancy:
    def test_another_users_model_and_job_are_404(self, client, alice, register):
        headers, _ = alice
        m = save(client, headers).json()
        bob = register("bob")
        assert_error(client.get(f"/api/models/{m['model_id']}", headers=bob), 404)
        assert_error(client.delete(f"/api/models/{m['model_id']}", headers=bob), 404)
        assert_error(save(client, bob), 404, "job_not_found")
        assert client.get("/api/models", headers=bob).json()["data"] == []
        assert client.get(f"/api/models/{m['model_id']}", headers=headers).status_code == 200


class TestResolveModel:
    def test_job_name_model_id_and_latest_name(self, client, alice, job_row, session_factory):
        headers, uid = alice
        job_row(uid, "llm-tune-alice-tiny-2")
        v1 = save(client, headers).json()
        v2 = save(client, headers, job_name="llm-tune-alice-tiny-2").json()
        with session_factory() as s:
            user = s.get(User, uid)
            job, reg = resolve_model(s, user, "llm-tune-alice-tiny-1")
            assert job.job_name == "llm-tune-alice-tiny-1" and reg is None
            job, reg = resolve_model(s, user, v1["model_id"])
            assert job.job_name == "llm-tune-alice-tiny-1" and reg.version == 1
            job, reg = resolve_model(s, user, "support-bot")
            assert job.job_name == "llm-tune-alice-tiny-2" and reg.id == v2["model_id"]
            with pytest.raises(NotFound):
                resolve_model(s, user, "missing")

    def test_other_users_refs_do_not_resolve(self, client, alice, register, user_id, session_factory):
        headers, _ = alice
        m = save(client, headers).json()
        bob_id = user_id(register("bob"))
        with session_factory() as s:
            bob = s.get(User, bob_id)
            for ref in (m["model_id"], "support-bot", "llm-tune-alice-tiny-1"):
                with pytest.raises(NotFound):
                    resolve_model(s, bob, ref)
