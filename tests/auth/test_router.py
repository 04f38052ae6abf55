from __future__ import annotations

import time

import pytest
from jose import jwt

from tests.conftest import assert_error
from tests.settings import TEST_JWT_SECRET


class TestRegister:
    def test_register_returns_user_without_password(self, client):
        r = client.post("/api/auth/register",
                        json={"username": "bob", "email": "Bob@Example.com", "password": "a long password"})
        assert r.status_code == 201
        body = r.json()
        assert body["username"] == "bob" and body["email"] == "bob@example.com"
        assert not any("password" in k for k in body)

    def test_duplicate_username_is_409(self, client, register):
        register("bob")
        r = client.post("/api/auth/register",
                        json={"username": "bob", "email": "other@example.com", "password": "a long password"})
        assert_error(r, 409, "username_taken", "username")

    def test_short_password_names_the_field(self, client):
        r = client.post("/api/auth/register", json={"username": "bob", "email": "b@example.com", "password": "x"})
        assert_error(r, 422, "password_too_short", "password")

    def test_missing_and_wrong_fields(self, client):
        r = client.post("/api/auth/register", json={"username": 5, "email": "nope"})
        err = assert_error(r, 422, "validation_error")
        params = {d["param"] for d in err["details"]}
        assert {"username", "email", "password"} <= params

    def test_malformed_json_is_400(self, client):
        r = client.post("/api/auth/register", content=b'{"username": ', headers={"Content-Type": "application/json"})
        assert_error(r, 400, "invalid_json")

    def test_oversized_body_is_413(self, client):
        r = client.post("/api/auth/register", content=b"x" * (2 * 1024 * 1024),
                        headers={"Content-Type": "application/json"})
        assert_error(r, 413, "payload_too_large")


class TestToken:
    def test_login_and_me(self, client, register):
        headers = register("carol")
        r = client.get("/api/auth/me", headers=headers)
        assert r.status_code == 200 and r.json()["username"] == "carol"

    def test_wrong_password_and_unknown_user_look_the_same(self, client, register):
        register("dave")
        a = client.post("/api/auth/token", data={"username": "dave", "password": "wrong password!"})
        b = client.post("/api/auth/token", data={"username": "nobody", "password": "wrong password!"})
        assert a.status_code == b.status_code == 401
        assert a.json() == b.json()

    def test_repeated_failures_are_429(self, client, register):
        register("erin")
        for _ in range(5):
            client.post("/api/auth/token", data={"username": "erin", "password": "bad password"})
        r = client.post("/api/auth/token", data={"username": "erin", "password": "correct horse battery"})
        assert_error(r, 429, "too_many_login_attempts", "username")
        assert int(r.headers["Retry-After"]) > 0


class TestBadTokens:
    def _claims(self, **over):
        now = int(time.time())
        c = {"sub": "x", "iat": now, "exp": now + 60, "iss": "llmtuner", "aud": "llmtuner-api"}
        c.update(over)
        return c

    def test_no_token(self, client):
        assert_error(client.get("/api/auth/me"), 401, "missing_token")

    def test_alg_none_is_rejected(self, client, register):
        register("frank")
        me_id = "whatever"
        import base64
        import json

        def b64(d):
            return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

        token = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(self._claims(sub=me_id))}."
        assert_error(client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"}), 401,
                     "invalid_token")

    def test_tampered_payload(self, client, register):
        headers = register("gina")
        token = headers["Authorization"].split()[1]
        h, p, s = token.split(".")
        p2 = p[:-2] + ("A" if p[-2] != "A" else "B") + p[-1]
        assert_error(client.get("/api/auth/me", headers={"Authorization": f"Bearer {h}.{p2}.{s}"}), 401)

    def test_expired_token(self, client, register, app):
        register("hank")
        uid = client.get("/api/auth/me", headers=register("ivan")).json()["id"]
        tok = jwt.encode(self._claims(sub=uid, exp=int(time.time()) - 10), TEST_JWT_SECRET, algorithm="HS256")
        assert_error(client.get("/api/auth/me", headers={"Authorization": f"Bearer {tok}"}), 401,
                     "token_expired")

    def test_wrong_audience(self, client, register):
        uid = client.get("/api/auth/me", headers=register("jack")).json()["id"]
        tok = jwt.encode(self._claims(sub=uid, aud="someone-else"), TEST_JWT_SECRET, algorithm="HS256")
        assert_error(client.get("/api/auth/me", headers={"Authorization": f"Bearer {tok}"}), 401)

    def test_token_for_deleted_user(self, client, register, session_factory):
        from app.auth.models import User

        headers = register("kate")
        with session_factory() as s:
            s.delete(s.query(User).filter_by(username="kate").one())
            s.commit()
        assert_error(client.get("/api/auth/me", headers=headers), 401, "invalid_token")


class TestBudget:
    def test_only_admin_sets_budget(self, client, register, session_factory):
        from app.auth.models import User

        admin = register("root1")
        register("luke")
        r = client.put("/api/auth/users/luke/budget", json={"monthly_budget": 5}, headers=admin)
        assert_error(r, 404)
        with session_factory() as s:
            s.query(User).filter_by(username="root1").one().is_admin = True
            s.commit()
        r = client.put("/api/auth/users/luke/budget", json={"monthly_budget": 5}, headers=admin)
        assert r.status_code == 200 and r.json()["monthly_budget"] == 5


class TestAuthorizationHeader:
    @pytest.mark.parametrize("value", ["Basic YTpi", "Bearer", "Token x.y.z", "bearer"])
    def test_not_a_bearer_token_is_401_invalid_token(self, client, value):
        r = client.get("/api/auth/me", headers={"Authorization": value})
        assert_error(r, 401, "invalid_token")
        assert r.headers["WWW-Authenticate"] == "Bearer"

    def test_missing_on_any_authenticated_route(self, client):
        for path in ("/api/auth/me", "/api/usage"):
            r = client.get(path)
            msg = "Missing Authorization header: send `Authorization: Bearer <token>`"
            assert r.json() == {"error": {"code": "missing_token", "message": msg, "param": None, "details": None}}
            assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"

    def test_scheme_is_case_insensitive(self, client, register):
        token = register("lena")["Authorization"].split()[1]
        assert client.get("/api/auth/me", headers={"Authorization": f"bearer {token}"}).json()["username"] == "lena"


def test_me_body_is_the_user_read_model(client, register, session_factory):
    from app.auth.models import User
    from app.auth.schemas import UserRead

    r = client.get("/api/auth/me", headers=register("mia"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    with session_factory() as s:
        user = s.query(User).filter_by(username="mia").one()
        assert r.content == UserRead.model_validate(user).model_dump_json().encode()
    assert set(r.json()) == {"id", "username", "email", "is_admin", "monthly_budget", "created_at"}
    assert r.json()["created_at"].endswith("Z")


def test_openapi_documents_bearer_auth(client):
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"] == {"bearer": {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "A token from POST /api/auth/token"}}
    me = spec["paths"]["/api/auth/me"]["get"]
    assert me["security"] == [{"bearer": []}]
    assert me["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/UserRead"}
    assert spec["paths"]["/api/usage"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/api/auth/register"]["post"]
    for path, ops in spec["paths"].items():
        for op in ops.values():
            names = [p["name"].lower() for p in op.get("parameters", [])]
            assert "authorization" not in names, f"{path}: the token is a security scheme, not a parameter"
