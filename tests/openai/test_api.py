"""/v1 with a fake model server: OpenAI's error shapes and exceptions, unsupported fields, tenancy,
and streams relayed as they come (no buffering)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import update

from app.api_keys.models import ApiKey
from app.backends.base import Backends
from app.db import utcnow
from tests.deployments.conftest import FakeEndpointBackend, endpoint_row

Headers = dict[str, str]
CHAT = {"model": "my-model", "messages": [{"role": "user", "content": "hi"}]}


class StreamingFake(FakeEndpointBackend):
    """Streams "first", then waits for the test's go-ahead before the rest: a relay that buffered
    would hold "first" back until the end, and the test would see the gate still closed."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate_open_when_resumed: bool | None = None
        self.payloads: list[dict[str, Any]] = []
        self.fail_after_first = False

    async def invoke_stream(self, handle: dict[str, Any], payload: dict[str, Any],
                            timeout: float) -> AsyncIterator[dict[str, Any]]:
        self.payloads.append(payload)
        yield {"text": "first"}
        if self.fail_after_first:  # the model server's own mid-stream error event
            yield {"error": {"code": "generation_timeout", "message": "generation took longer than 60 s"}}
            return
        self.gate_open_when_resumed = await asyncio.to_thread(self.gate.wait, 20)
        yield {"text": " second"}
        yield {"text": "", "generated_text": "first second",
               "details": {"prompt_tokens": 3, "completion_tokens": 2, "finish_reason": "length"}}


@pytest.fixture
def fake_backend() -> StreamingFake:
    return StreamingFake()


@pytest.fixture
def backends(fake_backends: Backends) -> Backends:
    return fake_backends


@pytest.fixture
def served(client: Any, register: Callable[..., Headers], user_id: Callable[..., str], completed_job: Any,
           reconcile_once: Callable[..., None], fake_backend: StreamingFake) -> dict[str, Any]:
    alice = register("alice")
    job = completed_job(user_id(alice))
    assert client.post("/api/deploy-model", headers=alice,
                       json={"model_name": "my-model", "job_name": job.job_name}).status_code == 202
    reconcile_once()
    fake_backend.set("my-model-endpoint", "InService")
    reconcile_once()
    key = client.post("/api/api-keys", headers=alice, json={"name": "k"}).json()
    return {"headers": alice, "key": key, "auth": {"Authorization": f"Bearer {key['key']}"}}


def oai_error(resp: Any, status: int, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["type"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return dict(err)


def test_non_streaming_answer_shape_and_usage(client: Any, served: dict[str, Any], fake_backend: StreamingFake):
    r = client.post("/v1/chat/completions", headers=served["auth"], json={**CHAT, "max_completion_tokens": 4,
                                                                         "temperature": 0, "stop": ["\n"]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    assert out["choices"][0]["message"] == {"role": "assistant", "content": " and then the answer", "refusal": None}
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    sent = fake_backend.invocations[-1]["payload"]
    assert sent["messages"] == [{"role": "user", "content": "hi"}] and "adapter" not in sent
    assert sent["parameters"] == {"max_new_tokens": 4, "temperature": 0.0, "stop": ["\n"], "return_full_text": False}
    r = client.post("/v1/completions", headers=served["auth"], json={"model": "my-model", "prompt": "Once"})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == " and then the answer", r.text
    assert fake_backend.invocations[-1]["payload"]["parameters"]["raw"] is True
    usage = client.get("/api/endpoint/my-model-endpoint/usage", headers=served["headers"])
    assert usage.json() == [{"adapter": None, "requests": 2, "streamed": 0, "prompt_tokens": 10,
                             "completion_tokens": 8}], usage.text


def test_stream_is_relayed_as_it_is_generated(served: dict[str, Any], fake_backend: StreamingFake,
                                              live_url: str) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    events = []
    with httpx.stream("POST", f"{live_url}/v1/chat/completions", json=body, timeout=30,
                      headers=served["auth"]) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line:
                continue
            events.append(line)
            if "first" in line:
                fake_backend.gate.set()  # only now may the server go on
    assert fake_backend.gate_open_when_resumed is True
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:3]] == ["first", " second"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length" and chunks[-1]["usage"]["total_tokens"] == 5


def test_openai_exceptions_for_unknown_model_bad_keys_and_unsupported_fields(
        client: Any, served: dict[str, Any], session_factory: Any) -> None:
    oai = openai.OpenAI(base_url="http://testserver/v1", api_key=served["key"]["key"], http_client=client,
                        max_retries=0)
    with pytest.raises(openai.NotFoundError) as nf:
        oai.chat.completions.create(model="nope", messages=CHAT["messages"])
    assert nf.value.code == "model_not_found" and nf.value.param == "model"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(model="my-model", messages=CHAT["messages"], n=2)
    assert bad.value.param == "n"  # type: ignore[attr-defined]
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(model="my-model", messages=CHAT["messages"], tools=[tool])  # type: ignore[list-item]
    assert bad.value.param == "tools" and bad.value.code == "unsupported_parameter"  # type: ignore[attr-defined]

    auth = served["auth"]
    for extra, param in (({"logprobs": True}, "logprobs"), ({"presence_penalty": 0.5}, "presence_penalty"),
                         ({"response_format": {"type": "json_object"}}, "response_format"),
                         ({"max_tokens": 0}, "max_tokens"), ({"temperature": 3}, "temperature"),
                         ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role")):
        oai_error(client.post("/v1/chat/completions", headers=auth, json={**CHAT, **extra}), 400, param)
    oai_error(client.post("/v1/completions", headers=auth, json={"model": "my-model", "prompt": ["a", "b"]}),
              400, "prompt")
    oai_error(client.post("/v1/chat/completions", headers=auth, content=b"{not json"), 400, code="invalid_json")
    oai_error(client.post("/v1/chat/completions", json=CHAT), 401, code="missing_token")

    client.delete(f"/api/api-keys/{served['key']['id']}", headers=served["headers"])
    with pytest.raises(openai.AuthenticationError):
        oai.models.list()
    fresh = client.post("/api/api-keys", headers=served["headers"], json={"name": "old"}).json()
    with session_factory() as s:
        s.execute(update(ApiKey).where(ApiKey.id == fresh["id"]).values(expires_at=utcnow()))
        s.commit()
    oai_error(client.get("/v1/models", headers={"Authorization": f"Bearer {fresh['key']}"}), 401,
              code="api_key_expired")


def test_another_users_model_is_404_and_not_listed(client: Any, served: dict[str, Any],
                                                  register: Callable[..., Headers]) -> None:
    bob = register("bob")
    assert client.get("/v1/models", headers=bob).json() == {"object": "list", "data": []}
    assert client.get("/api/endpoint/my-model-endpoint/usage", headers=bob).status_code == 404
    oai_error(client.post("/v1/chat/completions", headers=bob, json=CHAT), 404, "model", "model_not_found")
    assert [m["id"] for m in client.get("/v1/models", headers=served["auth"]).json()["data"]] == ["my-model"]


def test_an_endpoint_not_in_service_is_refused(client: Any, served: dict[str, Any], session_factory: Any,
                                               fake_backend: StreamingFake, reconcile_once: Any) -> None:
    fake_backend.set("my-model-endpoint", "Failed", "boom")
    reconcile_once()
    assert endpoint_row(session_factory, "my-model-endpoint").status == "Failed"
    err = oai_error(client.post("/v1/chat/completions", headers=served["auth"], json=CHAT), 409, "model",
                    "model_not_ready")
    assert "Failed: boom" in err["message"]


def test_an_error_after_the_stream_began_is_its_last_event(client: Any, served: dict[str, Any],
                                                          fake_backend: StreamingFake) -> None:
    fake_backend.fail_after_first = True
    body = {"model": "my-model", "prompt": "x", "stream": True}
    r = client.post("/v1/completions", headers=served["auth"], json=body)
    assert r.status_code == 200
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[0]["choices"][0]["text"] == "first"
    assert events[-1]["error"]["code"] == "generation_timeout" and events[-1]["error"]["type"] == "api_error"
    oai = openai.OpenAI(base_url="http://testserver/v1", api_key=served["key"]["key"], http_client=client,
                        max_retries=0)
    with pytest.raises(openai.APIError):
        list(oai.completions.create(model="my-model", prompt="x", stream=True))
