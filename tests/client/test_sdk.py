"""The whole journey through the SDK against a live server: upload -> train -> wait -> download and load
the adapter with peft -> register -> deploy -> invoke -> evaluate -> usage."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from llmtuner import AsyncClient, AuthenticationError, Client, NotFoundError, TrainingConfig, ValidationError
from tests.client.conftest import FAST, TINY_ID, LiveServer


class DropFirstJobResponse(httpx.HTTPTransport):
    """Delivers the first POST /api/training-job to the server, then loses its answer (a dropped
    connection): the client must retry with the same Idempotency-Key and get the same job back."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = super().handle_request(request)
        if request.method == "POST" and request.url.path == "/api/training-job":
            self.keys.append(request.headers.get("Idempotency-Key"))
            if len(self.keys) == 1:
                resp.read()
                resp.close()
                raise httpx.ReadError("connection reset", request=request)
        return resp


def load_and_generate(folder: Path) -> int:
    """Seed-style local loading: the base model + PeftModel.from_pretrained; returns new tokens."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder / "base_model"), folder)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("### User:\nHow do I reset my password?\n\n### Assistant:\n", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    return int(out.shape[1] - ids.shape[1])


def test_journey(live_server: LiveServer, qa_file: Path, tmp_path: Path) -> None:
    token = live_server.register("sdkuser")
    transport = DropFirstJobResponse()
    with Client(live_server.url, token, http_client=httpx.Client(base_url=live_server.url, transport=transport,
                                                                 timeout=120)) as client:
        sent: list[tuple[int, int]] = []
        ds = client.datasets.upload(qa_file, on_progress=lambda done, total: sent.append((done, total)))
        assert ds.report.is_valid and ds.report.total_examples == 24 and ds.status == "ready"
        assert sent and sent[-1] == (qa_file.stat().st_size, qa_file.stat().st_size)
        assert [d.id for d in client.datasets.list()] == [ds.id]

        job = client.jobs.create(dataset=ds, base_model=TINY_ID, hyperparameters=TrainingConfig(**FAST))
        assert transport.keys[0] and transport.keys == [transport.keys[0]] * 2  # one key, sent twice
        assert [j.job_name for j in client.jobs.list()] == [job.job_name]  # the retry made no second job
        assert job.hyperparameters["learning_rate"] == FAST["learning_rate"]

        seen: list[str] = []
        job = client.jobs.wait(job, poll_interval=0.5, timeout=300, on_progress=lambda j: seen.append(j.status))
        assert job.status == "Completed" and seen[-1] == "Completed" and job.progress.percent == 100.0
        assert job.metric("train_loss") is not None
        losses = client.jobs.metrics(job, metric_name="train_loss")
        assert len(losses) >= 2 and {p.metric_name for p in losses} == {"train_loss"}
        assert [e.type for e in client.jobs.events(job)][0] == "created"
        assert {a.name: a.available for a in client.jobs.actions(job).actions}["download"]

        folder = client.jobs.download(job, tmp_path / "model")
        assert (folder / "adapter_model.safetensors").is_file()
        assert load_and_generate(folder) > 0

        reg = client.models.create(job, "sdk-bot", tags=["faq"])
        assert reg.version == 1 and [m.model_id for m in client.models.list()] == [reg.model_id]

        dep = client.endpoints.deploy(job, model_name="sdk-bot", instance_type="local")
        name = dep.deployment.endpoint_name
        assert name == "sdk-bot-endpoint" and dep.deployment.status == "Creating"
        ep = client.endpoints.wait(name, poll_interval=0.5, timeout=180)
        assert ep.status == "InService" and [e.endpoint_name for e in client.endpoints.list()] == [name]
        out = client.endpoints.invoke(name, "How do I reset my password?", max_new_tokens=8, temperature=0)
        assert out.endpoint_name == name and out.usage.completion_tokens > 0
        pieces = list(client.chat_stream(name, [{"role": "user", "content": "Hello"}], max_tokens=4))
        assert pieces and all(isinstance(p, str) for p in pieces)
        assert client.endpoints.delete(name).status in ("Deleting", "Deleted")

        ev = client.evaluations.create(job, max_examples=2, generation={"max_new_tokens": 4},
                                       include_general_probe=False)
        ev = client.evaluations.wait(ev, poll_interval=0.5, timeout=300)
        assert ev.status == "Completed" and ev.results is not None
        assert ev.results.base is not None and ev.results.improvement is not None
        assert "perplexity" in ev.results.tuned

        usage = client.usage()
        assert [j.job_name for j in usage.training.jobs] == [job.job_name]
        assert name in [e.endpoint_name for e in usage.inference.endpoints]
        assert usage.currency == "USD"
        assert (usage.training.count, usage.evaluation.count) == (1, 1) and usage.inference.count >= 1
        assert len(usage.daily) == 30 and usage.daily == sorted(usage.daily, key=lambda d: d.day)
        spent = sum(d.training + d.inference + d.evaluation for d in usage.daily)
        assert spent == pytest.approx(usage.total, abs=0.01)  # everything here happened within the 30 days
        newest = client.usage(limit=1)  # the lists are cut to the newest, the counts and totals are not
        assert len(newest.inference.endpoints) == 1 and newest.inference.count == usage.inference.count
        assert [e.id for e in newest.evaluation.evaluations] == [ev.id]


def test_errors_are_typed(live_server: LiveServer, qa_file: Path) -> None:
    client = Client(live_server.url, live_server.register("sdkerrors"))
    with pytest.raises(NotFoundError) as nf:
        client.jobs.get("llm-tune-nobody-tiny-llama-20250101-000000")
    assert nf.value.status_code == 404 and nf.value.code and nf.value.message
    ds = client.datasets.upload(qa_file)
    with pytest.raises(ValidationError) as bad:
        client.jobs.create(ds, TINY_ID, TrainingConfig(learning_rate=-1))
    assert bad.value.param == "hyperparameters.learning_rate" and bad.value.code == "validation_error"
    with pytest.raises(AuthenticationError) as auth:
        Client(live_server.url, "not-a-token").me()
    assert auth.value.status_code == 401
    with pytest.raises(AuthenticationError):
        Client(live_server.url, username="sdkerrors", password="wrong password!").me()


def test_password_login_and_api_key(live_server: LiveServer) -> None:
    live_server.register("sdkkeys")
    client = Client(live_server.url, username="sdkkeys", password="correct horse battery")
    assert client.me().username == "sdkkeys"
    created = client.api_keys.create("sdk test", scope="full")
    assert created.key.startswith("llmt_")
    assert Client(live_server.url, created.key).me().username == "sdkkeys"


def test_async_client(live_server: LiveServer, qa_file: Path, tmp_path: Path) -> None:
    token = live_server.register("sdkasync")

    async def run() -> None:
        async with AsyncClient(live_server.url, token) as client:
            ds = await client.datasets.upload(qa_file)
            assert (await client.datasets.get(ds.id)).report.is_valid
            assert [d.id async for d in client.datasets.list()] == [ds.id]
            assert (await client.me()).username == "sdkasync"
            with pytest.raises(NotFoundError):
                await client.endpoints.get("nope-endpoint")
            job = await client.jobs.create(ds, TINY_ID, {**FAST, "max_steps": 1})
            job = await client.jobs.wait(job, poll_interval=0.5, timeout=300)
            assert job.status == "Completed"
            folder = await client.jobs.download(job, tmp_path / "async-model")
            assert (folder / "adapter_model.safetensors").is_file()

    asyncio.run(run())


def test_list_pages_through_everything(live_server: LiveServer, qa_file: Path) -> None:
    client = Client(live_server.url, live_server.register("sdkpages"))
    ids = {client.datasets.upload(qa_file, name=f"d{i}").id for i in range(3)}
    from llmtuner import _core

    old = _core.PAGE_SIZE
    _core.PAGE_SIZE = 2  # three datasets over two pages
    try:
        assert {d.id for d in client.datasets.list()} == ids
        assert len(list(client.datasets.list(limit=1))) == 1
    finally:
        _core.PAGE_SIZE = old
