"""Settings for tests. Outside development the app refuses the built-in JWT secret (app/config.py),
so every test app gets this fixed one; tests that forge tokens sign them with it."""

from __future__ import annotations

from typing import Any

from app.config import Settings

TEST_JWT_SECRET = "test-suite-jwt-secret-never-use-in-production"
# The same secret for an app started in a subprocess (it reads its settings from the environment).
SECRET_ENV = {"LLMTUNER_JWT__SECRET": TEST_JWT_SECRET}


def make_test_settings(**kw: Any) -> Settings:
    """Settings(env="test", jwt secret = TEST_JWT_SECRET, **kw); a `jwt` dict given keeps its own keys."""
    kw.setdefault("env", "test")
    jwt = kw.get("jwt")
    if jwt is None or isinstance(jwt, dict):
        kw["jwt"] = {"secret": TEST_JWT_SECRET, **(jwt or {})}
    return Settings(**kw)
