"""Retries, backoff and error mapping, against scripted answers (httpx.MockTransport): which calls are
sent again, how often, after how long, and which never are."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from llmtuner import (
    APIConnectionError,
    BadRequestError,
    Client,
    InternalServerError,
    RateLimitError,
    ServiceUnavailableError,
)
from llmtuner import _core as core

DEPLOYED = {"deployment": {"endpoint_name": "bot-endpoint", "status": "Creating", "instance_type": "local",
                           "estimated_cost_per_hour": 0.0}}


def scripted(answers: list[Callable[[httpx.Request], httpx.Response]], sleeps: list[float],
             monkeypatch: pytest.MonkeyPatch) -> tuple[Client, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[min(len(seen), len(answers)) - 1](request)

    monkeypatch.setattr("llmtuner.client.time.sleep", sleeps.append)
    http = httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(handler))
    return Client("http://api.test", "tok", http_client=http, max_retries=3), seen


def status(code: int, error: str = "e", headers: dict[str, str] | None = None) -> Callable[..., httpx.Response]:
    return lambda req: httpx.Response(code, headers=headers, json={"error": {
        "code": error, "message": f"HTTP {code}", "param": None, "details": None}})


def ok(body: Any) -> Callable[..., httpx.Response]:
    return lambda req: httpx.Response(200, json=body)


def dropped(req: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=req)


def reset(req: httpx.Request) -> httpx.Response:
    raise httpx.ReadError("connection reset", request=req)


def test_reads_retry_on_503_and_429_then_succeed(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    client, seen = scripted([status(503), status(429, "rate_limited", {"Retry-After": "2"}), ok({"id": "u"})],
                            sleeps, monkeypatch)
    assert client.health() == {"id": "u"}
    assert len(seen) == 3 and sleeps[1] == 2.0 and 0 < sleeps[0] <= 0.5


def test_gives_up_after_max_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    client, seen = scripted([status(503, "backend_throttled")], sleeps, monkeypatch)
    with pytest.raises(ServiceUnavailableError) as e:
        client.health()
    assert len(seen) == 4 and len(sleeps) == 3 and e.value.code == "backend_throttled"
    assert sleeps == sorted(sleeps) or max(sleeps) <= 4  # growing, with jitter


def test_creates_resend_the_same_idempotency_key(monkeypatch: pytest.MonkeyPatch) -> None:
    client, seen = scripted([reset, status(503), ok(DEPLOYED)], [], monkeypatch)
    assert client.endpoints.deploy("job-1", model_name="bot").deployment.endpoint_name == "bot-endpoint"
    keys = {r.headers["Idempotency-Key"] for r in seen}
    assert len(seen) == 3 and len(keys) == 1 and keys.pop().startswith("llmtuner-")


def test_unkeyed_posts_are_not_resent_after_they_may_have_arrived(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text('{"prompt": "a", "response": "b"}\n')
    client, seen = scripted([reset], [], monkeypatch)
    with pytest.raises(APIConnectionError):
        client.datasets.upload(f)
    assert len(seen) == 1
    client, seen = scripted([status(503)], [], monkeypatch)
    with pytest.raises(ServiceUnavailableError):
        client.datasets.upload(f)
    assert len(seen) == 1
    client, seen = scripted([dropped, status(429, "rate_limited"), status(400)], [], monkeypatch)
    with pytest.raises(BadRequestError):  # never sent, or refused before acting: sent again
        client.datasets.upload(f)
    assert len(seen) == 3 and all(r.content.count(b"prompt") == 1 for r in seen)  # the file in full each time


def test_spent_budget_and_long_lockouts_are_not_waited_out(monkeypatch: pytest.MonkeyPatch) -> None:
    client, seen = scripted([status(429, "budget_exceeded")], [], monkeypatch)
    with pytest.raises(RateLimitError) as e:
        client.health()
    assert len(seen) == 1 and e.value.code == "budget_exceeded"
    client, seen = scripted([status(429, "too_many_login_attempts", {"Retry-After": "300"})], [], monkeypatch)
    with pytest.raises(RateLimitError):
        client.health()
    assert len(seen) == 1


def test_error_bodies_of_any_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = scripted([lambda req: httpx.Response(502, text="<html>Bad gateway</html>")], [], monkeypatch)
    with pytest.raises(InternalServerError) as e:
        client.health()
    assert e.value.status_code == 502 and e.value.code == "http_error" and "Bad gateway" in e.value.message


def test_password_login_and_relogin_on_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = iter(["t1", "t2"])
    answers = {"/api/auth/token": lambda req: httpx.Response(200, json={"access_token": next(tokens),
                                                                        "expires_in": 60})}
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        if req.url.path in answers:
            return answers[req.url.path](req)
        if req.headers.get("Authorization") == "Bearer t1" and len(seen) > 2:
            return status(401, "token_expired")(req)
        return httpx.Response(200, json={"ok": req.headers["Authorization"]})

    http = httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(handler))
    client = Client("http://api.test", username="ada", password="pw", http_client=http)
    assert client._run(client._send_op(core.Request("GET", "/x"))) == {"ok": "Bearer t1"}
    assert client._run(client._send_op(core.Request("GET", "/x"))) == {"ok": "Bearer t2"}
    assert [r.url.path for r in seen] == ["/api/auth/token", "/x", "/x", "/api/auth/token", "/x"]
    assert b"password=pw" in seen[0].content
