from __future__ import annotations

import pytest

from app.config import Settings
from tests.conftest import assert_error


def test_health_ok(client):
    r = client.get("/api/health")
    assert r.status_code == 200
    assert r.json() | {"version": "x"} == {"status": "ok", "database": "ok", "storage": "ok",
                                           "backend": "local", "version": "x"}


def test_health_names_failing_store(client, app):
    class Broken:
        def health(self):
            raise OSError("disk gone")

    app.state.store = Broken()
    r = client.get("/api/health")
    assert r.status_code == 503 and r.json()["storage"].startswith("error")


def test_unknown_route_and_method(client):
    assert_error(client.get("/api/nope"), 404, "not_found")
    assert_error(client.delete("/api/health"), 405, "method_not_allowed")


def test_unexpected_exception_is_opaque_500(client, app, caplog):
    @app.get("/api/boom")
    async def boom():
        raise RuntimeError("secret internals")

    r = client.get("/api/boom")
    err = assert_error(r, 500, "internal_error")
    assert "secret" not in r.text and err["details"][0]["error_id"] in err["message"]


def test_production_refuses_dev_secret(monkeypatch):
    with pytest.raises(ValueError, match="LLMTUNER_JWT__SECRET"):
        Settings(env="production")
    Settings(env="production", jwt={"secret": "x" * 40})


def test_nested_env_settings(monkeypatch):
    monkeypatch.setenv("LLMTUNER_AWS__REGION", "eu-west-1")
    monkeypatch.setenv("LLMTUNER_BACKEND", "sagemaker")
    s = Settings()
    assert s.aws.region == "eu-west-1" and s.backend == "sagemaker"
