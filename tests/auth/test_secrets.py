"""Signing secrets: development generates one and keeps it; every other env refuses the built-in one;
tokens must carry the claims we issue (negative JWT tests, each with its error code)."""

from __future__ import annotations

import stat
import time
from pathlib import Path
from typing import Any

import pytest
from jose import jwt

from app.config import DEV_JWT_SECRET, Settings
from app.errors import Unauthorized
from app.security import SECRET_FILE, Tokens, ensure_jwt_secret
from tests.settings import TEST_JWT_SECRET, make_test_settings


def dev_settings(data_dir: Path) -> Settings:
    return Settings(_env_file=None, env="development", data_dir=data_dir)  # type: ignore[call-arg]


def test_development_generates_a_secret_once_and_keeps_it(tmp_path: Path) -> None:
    first = dev_settings(tmp_path / "data")
    ensure_jwt_secret(first)
    secret = first.jwt.secret.get_secret_value()
    assert secret != DEV_JWT_SECRET and len(secret) >= 32
    f = tmp_path / "data" / SECRET_FILE
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    again = dev_settings(tmp_path / "data")  # a restart: same secret, so tokens survive it
    ensure_jwt_secret(again)
    assert again.jwt.secret.get_secret_value() == secret
    forged = jwt.encode({"sub": "x", "iat": int(time.time()), "exp": int(time.time()) + 10**9, "iss": "llmtuner",
                         "aud": "llmtuner-api"}, DEV_JWT_SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized):
        Tokens(again).subject(forged)


def test_a_configured_secret_is_kept(tmp_path: Path) -> None:
    s = Settings(_env_file=None, env="development", data_dir=tmp_path, jwt={"secret": "s" * 40})  # type: ignore[call-arg]
    ensure_jwt_secret(s)
    assert s.jwt.secret.get_secret_value() == "s" * 40 and not (tmp_path / SECRET_FILE).exists()


@pytest.mark.parametrize("env", ["test", "production"])
def test_outside_development_the_built_in_secret_is_refused(env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMTUNER_JWT__SECRET", raising=False)
    with pytest.raises(ValueError, match=f"LLMTUNER_JWT__SECRET is unset.*LLMTUNER_ENV={env}"):
        Settings(_env_file=None, env=env)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="LLMTUNER_JWT__SECRET must be at least 32 characters"):
        Settings(_env_file=None, env=env, jwt={"secret": "s" * 31})  # type: ignore[call-arg]
    assert Settings(_env_file=None, env=env, jwt={"secret": "s" * 32}).env == env  # type: ignore[call-arg]


def test_the_environment_variable_provides_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMTUNER_ENV", "production")
    monkeypatch.setenv("LLMTUNER_JWT__SECRET", "e" * 40)
    assert Settings(_env_file=None).jwt.secret.get_secret_value() == "e" * 40  # type: ignore[call-arg]


def test_development_accepts_the_built_in_secret_and_replaces_it(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMTUNER_JWT__SECRET", raising=False)
    s = dev_settings(tmp_path / "data")
    assert s.jwt.secret.get_secret_value() == DEV_JWT_SECRET  # accepted: built without error
    ensure_jwt_secret(s)  # and never used to sign: the app start swaps in the generated one
    assert s.jwt.secret.get_secret_value() != DEV_JWT_SECRET
    short = Settings(_env_file=None, env="development", data_dir=tmp_path, jwt={"secret": "short"})  # type: ignore[call-arg]
    assert short.jwt.secret.get_secret_value() == "short"  # a developer's own choice, kept


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    c = {"sub": "user-1", "iat": now, "exp": now + 60, "iss": "llmtuner", "aud": "llmtuner-api", **over}
    return {k: v for k, v in c.items() if v is not None}


@pytest.mark.parametrize("over", [{"iss": "someone-else"}, {"aud": "someone-else"}, {"iss": None},
                                  {"aud": None}, {"sub": None}, {"iat": None}, {"exp": None}],
                         ids=["wrong-iss", "wrong-aud", "no-iss", "no-aud", "no-sub", "no-iat", "no-exp"])
def test_tokens_without_our_claims_are_refused(over: dict[str, Any]) -> None:
    tokens = Tokens(make_test_settings(_env_file=None))
    token = jwt.encode(claims(**over), TEST_JWT_SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized) as e:
        tokens.subject(token)
    assert e.value.code == "invalid_token"
    assert tokens.subject(jwt.encode(claims(), TEST_JWT_SECRET, algorithm="HS256")) == "user-1"
