"""The official `openai` package against the real app and a real base-model endpoint (serve.py on
the tiny model) serving two adapters: list, complete and stream, sync and async, adapter and base."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from app.deployments.models import Endpoint, InferenceRecord
from tests.conftest import own_database

QUESTION = [{"role": "user", "content": "How do I reset my password?"}]


@pytest.fixture
def session_factory(tmp_path: Path) -> Iterator[Any]:
    """Its own database: the live server may still be finishing one request's database work (in
    its threadpool) when the client's next request arrives."""
    yield from own_database(tmp_path)


def test_list_complete_and_stream_for_adapters_and_the_base(deployed: dict[str, Any], live_url: str,
                                                            session_factory: Any) -> None:
    client = openai.OpenAI(base_url=f"{live_url}/v1", api_key=deployed["key"], max_retries=0)
    assert {"tiny-base", "support", "legal"} <= {m.id for m in client.models.list()}
    assert client.models.retrieve("legal").parent == "tiny-base"  # type: ignore[attr-defined]

    answers = {}
    for model in ("support", "legal", "tiny-base"):
        r = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=8, temperature=0)
        assert r.object == "chat.completion" and r.model == model
        assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].message.role == "assistant"
        assert r.usage is not None and r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 8
        answers[model] = r.choices[0].message.content
    assert len(set(answers.values())) == 3, answers  # each adapter answers its own way, and unlike the base

    chunks = list(client.chat.completions.create(model="support", messages=QUESTION, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answers["support"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage is not None and usage.completion_tokens <= 8

    done = client.completions.create(model="legal", prompt="Once upon a time", max_tokens=6, temperature=0)
    assert done.object == "text_completion" and done.usage is not None and done.usage.completion_tokens <= 6
    streamed = client.completions.create(model="legal", prompt="Once upon a time", max_tokens=6, temperature=0,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == done.choices[0].text

    with session_factory() as s:
        ep = s.scalar(select(Endpoint).where(Endpoint.endpoint_name == "tiny-base-endpoint"))
        rows = s.scalars(select(InferenceRecord).where(InferenceRecord.endpoint_id == ep.id)).all()
    assert sorted((r.adapter or "-", r.route, r.streamed) for r in rows) == [
        ("-", "chat.completions", False), ("legal", "chat.completions", False), ("legal", "completions", False),
        ("legal", "completions", True), ("support", "chat.completions", False), ("support", "chat.completions", True)]
    assert all(r.api_key_id for r in rows)
    usage = {u["adapter"]: u for u in httpx.get(f"{live_url}/api/endpoint/tiny-base-endpoint/usage",
                                                 headers=deployed["headers"]).json()}
    assert usage["legal"]["requests"] == 3 and usage["legal"]["streamed"] == 1 and usage[None]["requests"] == 1


def test_async_client_completes_and_streams(deployed: dict[str, Any], live_url: str) -> None:
    async def run() -> tuple[str, str]:
        client = openai.AsyncOpenAI(base_url=f"{live_url}/v1", api_key=deployed["key"], max_retries=0)
        models = [m.id async for m in client.models.list()]
        assert "support" in models
        r = await client.chat.completions.create(model="support", messages=QUESTION, max_tokens=8, temperature=0)
        stream = await client.chat.completions.create(model="support", messages=QUESTION, max_tokens=8,
                                                      temperature=0, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        return r.choices[0].message.content or "", text

    whole, streamed = asyncio.run(run())
    assert whole == streamed


def test_attach_and_detach_on_a_running_endpoint(deployed: dict[str, Any], live_url: str, client: Any,
                                                 session_factory: Any, completed_job: Any, user_id: Any) -> None:
    h = deployed["headers"]
    ep = session_factory().scalar(select(Endpoint).where(Endpoint.endpoint_name == "tiny-base-endpoint"))
    pid, port = ep.backend_handle["pid"], ep.backend_handle["port"]
    auth = {"X-LLMTuner-Token": ep.backend_handle["token"]}  # the server's secret: only the API holds it
    job = completed_job(user_id(h))
    r = client.post("/api/endpoint/tiny-base-endpoint/adapters", headers=h,
                    json={"job_name": job.job_name, "name": "billing"})
    assert r.status_code == 201 and r.json()["name"] == "billing", r.text
    oai = openai.OpenAI(base_url=f"{live_url}/v1", api_key=deployed["key"], max_retries=0)
    assert oai.chat.completions.create(model="billing", messages=QUESTION, max_tokens=4).usage is not None
    before = httpx.get(f"http://127.0.0.1:{port}/adapters", headers=auth).json()
    assert "billing" in before["resident"]

    r = client.delete("/api/endpoint/tiny-base-endpoint/adapters/billing", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "detached", r.text
    after = httpx.get(f"http://127.0.0.1:{port}/adapters", headers=auth).json()
    assert "billing" not in after["registered"] + after["resident"]
    assert after["resident_adapter_parameters"] < before["resident_adapter_parameters"]  # its weights are freed
    ep = session_factory().scalar(select(Endpoint).where(Endpoint.endpoint_name == "tiny-base-endpoint"))
    assert ep.backend_handle["pid"] == pid and ep.status == "InService"  # the same server, never restarted
    try:
        oai.chat.completions.create(model="billing", messages=QUESTION, max_tokens=4)
        raise AssertionError("a detached adapter still answered")
    except openai.NotFoundError as e:
        assert e.code == "model_not_found"
