"""API keys: created once, listed without the secret, revoked at once, scoped, tenant-bound."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from app.api_keys.models import ApiKey
from app.db import utcnow
from tests.conftest import assert_error


def make_key(client: Any, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    r = client.post("/api/api-keys", headers=headers, json={"name": "ci", **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_create_returns_the_secret_once_and_stores_only_a_keyed_hash(client, register, session_factory):
    h = register("alice")
    out = make_key(client, h, scope="full")
    secret = out["key"]
    assert secret.startswith("llmt_") and len(secret) >= 45
    assert out["prefix"] == secret[:12] and out["scope"] == "full" and out["last_used_at"] is None
    listed = client.get("/api/api-keys", headers=h).json()["data"]
    assert [k["id"] for k in listed] == [out["id"]]
    assert "key" not in listed[0] and listed[0]["prefix"] == secret[:12]
    with session_factory() as s:
        row = s.get(ApiKey, out["id"])
        assert row is not None and secret not in row.secret_hash and len(row.secret_hash) == 64
    assert make_key(client, h)["key"] != secret  # fresh randomness each time


def test_a_key_authenticates_as_its_owner_and_records_last_use(client, register):
    h = register("alice")
    key = make_key(client, h, scope="full")
    me = client.get("/api/auth/me", headers=bearer(key["key"]))
    assert me.status_code == 200 and me.json()["username"] == "alice"
    assert client.get("/api/datasets", headers=bearer(key["key"])).status_code == 200
    listed = client.get("/api/api-keys", headers=h).json()["data"][0]
    assert listed["last_used_at"] is not None


def test_revoked_expired_and_unknown_keys_are_401(client, register, session_factory):
    h = register("alice")
    key = make_key(client, h, scope="full")
    assert client.delete(f"/api/api-keys/{key['id']}", headers=h).status_code == 204
    assert_error(client.get("/api/auth/me", headers=bearer(key["key"])), 401, "api_key_revoked")
    assert client.get("/api/api-keys", headers=h).json()["data"] == []
    assert_error(client.get("/api/auth/me", headers=bearer(key["key"] + "x")), 401, "invalid_api_key")

    old = make_key(client, h, expires_in_days=1)
    with session_factory() as s:
        s.execute(update(ApiKey).where(ApiKey.id == old["id"]).values(expires_at=utcnow() - timedelta(seconds=1)))
        s.commit()
    assert_error(client.get("/api/auth/me", headers=bearer(old["key"])), 401, "api_key_expired")


def test_inference_scope_is_403_on_training_and_dataset_writes(client, register):
    h = register("alice")
    key = bearer(make_key(client, h)["key"])  # scope defaults to inference
    assert client.get("/api/auth/me", headers=key).status_code == 200
    assert client.get("/api/endpoints", headers=key).status_code == 200
    assert client.get("/api/endpoint/nope-endpoint/usage", headers=key).status_code == 404  # allowed, none such
    assert_error(client.post("/api/datasets", headers=key, files={"file": ("a.jsonl", b"{}")}), 403,
                 "insufficient_scope")
    assert_error(client.post("/api/training-job", headers=key, json={}), 403, "insufficient_scope")
    assert_error(client.post("/api/api-keys", headers=key, json={"name": "x"}), 403, "insufficient_scope")
    assert_error(client.get("/api/datasets", headers=key), 403, "insufficient_scope")


def test_another_users_key_is_404_and_keys_are_per_user(client, register):
    a, b = register("alice"), register("bob")
    key = make_key(client, a)
    assert_error(client.delete(f"/api/api-keys/{key['id']}", headers=b), 404, "api_key_not_found")
    assert client.get("/api/api-keys", headers=b).json()["data"] == []
    assert client.get("/api/auth/me", headers=bearer(key["key"])).json()["username"] == "alice"


def test_bad_input_names_the_field(client, register, session_factory):
    h = register("alice")
    assert_error(client.post("/api/api-keys", headers=h, json={"name": "x", "scope": "admin"}), 422,
                 param="scope")
    assert_error(client.post("/api/api-keys", headers=h, json={"name": ""}), 422, param="name")
    assert_error(client.post("/api/api-keys", headers=h,
                             json={"name": "x", "expires_at": "2020-01-01T00:00:00Z"}), 422, param="expires_at")
    assert_error(client.post("/api/api-keys", headers=h, json={"name": "x", "expires_in_days": 0}), 422,
                 param="expires_in_days")
    assert_error(client.post("/api/api-keys", json={"name": "x"}), 401)
    with session_factory() as s:
        assert s.scalars(select(ApiKey)).all() == []
