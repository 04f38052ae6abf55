"""Client (blocking) and AsyncClient: the same operations over httpx.Client and httpx.AsyncClient."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

import httpx

from llmtuner._core import (
    BaseClient,
    Download,
    Op,
    Raw,
    Request,
    Sleep,
    advance,
    async_op,
    opened_upload,
    paged,
    sync_op,
)
from llmtuner.datasets import AsyncDatasets, Datasets
from llmtuner.endpoints import AsyncEndpoints, Endpoints
from llmtuner.errors import error_from_response
from llmtuner.evaluations import ApiKeys, AsyncApiKeys, AsyncEvaluations, AsyncModels, Evaluations, Models
from llmtuner.jobs import AsyncJobs, Jobs
from llmtuner.types import APIModel, Usage, User

M = TypeVar("M", bound=APIModel)


class _AccountOps:
    def _usage(self, *, limit: int | None = None) -> Op[Usage]:
        """Training, inference and evaluation cost so far, in total, this month and per UTC day over the
        last 30 days; the newest `limit` (1-100, the server's default 20) jobs, endpoints and evaluations,
        each list's `count` saying how many there are in all; and the budget left."""
        return Usage.model_validate((yield Request("GET", "/api/usage", params={"limit": limit})))

    def _me(self) -> Op[User]:
        """The caller."""
        return User.model_validate((yield Request("GET", "/api/auth/me")))

    def _health(self) -> Op[dict[str, Any]]:
        """The server's health: status, database, storage, backend, version."""
        out = yield Request("GET", "/api/health", authenticated=False)
        return dict(out)

    def _base_models(self) -> Op[list[dict[str, Any]]]:
        """The base-model catalogue (id, family, parameters, task, max length, ...)."""
        return list((yield Request("GET", "/api/base-models"))["data"])

    def _instance_types(self) -> Op[list[dict[str, Any]]]:
        """Instance types with training and inference prices per hour."""
        return list((yield Request("GET", "/api/instance-types"))["data"])


class Client(BaseClient, _AccountOps):
    """The LLM Tuner API.

    `Client()` reads LLMTUNER_BASE_URL (default http://127.0.0.1:8000) and LLMTUNER_API_KEY, or
    LLMTUNER_USERNAME and LLMTUNER_PASSWORD; or pass `api_key=` (an `llmt_` key or a token from
    POST /api/auth/token), or `username=` and `password=` (logs in, and again when the token expires)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, username: str | None = None,
                 password: str | None = None, timeout: float = 120.0, max_retries: int = 3,
                 http_client: httpx.Client | None = None) -> None:
        super().__init__(base_url, api_key, username, password, timeout, max_retries)
        self._http = http_client or httpx.Client(base_url=self.base_url, timeout=timeout)
        self.datasets = Datasets(self)
        self.jobs = Jobs(self)
        self.endpoints = Endpoints(self)
        self.evaluations = Evaluations(self)
        self.models = Models(self)
        self.api_keys = ApiKeys(self)

    usage = sync_op(_AccountOps._usage)
    me = sync_op(_AccountOps._me)
    health = sync_op(_AccountOps._health)
    base_models = sync_op(_AccountOps._base_models)
    instance_types = sync_op(_AccountOps._instance_types)

    def _run(self, op: Op[Any]) -> Any:
        """Drive an operation: do what it yields, send back the answer (or throw in the error)."""
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = op.throw(error) if error is not None else op.send(value)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            try:
                value = self._do(step)
            except Exception as e:  # handed to the operation, which may handle it (retries) or not
                error = e

    def _do(self, step: Request | Raw | Sleep | Download) -> Any:
        if isinstance(step, Request):
            return self._run(self._send_op(step))
        if isinstance(step, Raw):
            with opened_upload(step.upload) as files:
                return self._http.request(**step.kwargs, files=files)
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
            return None
        # A download link carries its own credential (a signature): no Authorization header, which S3
        # would refuse beside a presigned query.
        with self._http.stream("GET", step.url, headers=self.headers) as resp, open(step.dest, "wb") as f:
            if resp.is_error:
                resp.read()
                raise error_from_response(resp)
            total, done = int(resp.headers.get("Content-Length") or 0), 0
            for chunk in resp.iter_bytes(1 << 20):
                f.write(chunk)
                done += len(chunk)
                if step.on_progress is not None:
                    step.on_progress(done, total)
        return None

    def _paginate(self, path: str, params: dict[str, Any], model: type[M], limit: int | None) -> Iterator[M]:
        steps = paged(path, params, model, limit)
        step = advance(steps, None)
        while step is not None:
            if isinstance(step, Request):
                step = advance(steps, self._run(self._send_op(step)))
            else:
                yield step
                step = advance(steps, None)

    def chat_stream(self, model: str, messages: list[dict[str, str]], **params: Any) -> Iterator[str]:
        """Stream a chat completion from the OpenAI-compatible `POST /v1/chat/completions`: the text
        pieces as they arrive. `model`: a deployed registered model or job of yours."""
        if self._token is None and self._password is not None:
            self._run(self._login_op())
        body = {"model": model, "messages": messages, "stream": True, **params}
        with self._http.stream(**self._request_kwargs(Request("POST", "/v1/chat/completions", json=body))) as resp:
            if resp.is_error:
                resp.read()
                raise error_from_response(resp)
            for line in resp.iter_lines():
                data = line[5:].strip() if line.startswith("data:") else ""
                if not data:
                    continue
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:  # an error after the stream started
                    raise error_from_response(httpx.Response(500, json=chunk))
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        yield piece

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(BaseClient, _AccountOps):
    """The LLM Tuner API for asyncio: the same resources and arguments as Client, awaited."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, username: str | None = None,
                 password: str | None = None, timeout: float = 120.0, max_retries: int = 3,
                 http_client: httpx.AsyncClient | None = None) -> None:
        super().__init__(base_url, api_key, username, password, timeout, max_retries)
        self._http = http_client or httpx.AsyncClient(base_url=self.base_url, timeout=timeout)
        self.datasets = AsyncDatasets(self)
        self.jobs = AsyncJobs(self)
        self.endpoints = AsyncEndpoints(self)
        self.evaluations = AsyncEvaluations(self)
        self.models = AsyncModels(self)
        self.api_keys = AsyncApiKeys(self)

    usage = async_op(_AccountOps._usage)
    me = async_op(_AccountOps._me)
    health = async_op(_AccountOps._health)
    base_models = async_op(_AccountOps._base_models)
    instance_types = async_op(_AccountOps._instance_types)

    async def _arun(self, op: Op[Any]) -> Any:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = op.throw(error) if error is not None else op.send(value)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            try:
                value = await self._ado(step)
            except Exception as e:
                error = e

    async def _ado(self, step: Request | Raw | Sleep | Download) -> Any:
        if isinstance(step, Request):
            return await self._arun(self._send_op(step))
        if isinstance(step, Raw):
            with opened_upload(step.upload) as files:
                return await self._http.request(**step.kwargs, files=files)
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            return None
        async with self._http.stream("GET", step.url, headers=self.headers) as resp:
            if resp.is_error:
                await resp.aread()
                raise error_from_response(resp)
            total, done = int(resp.headers.get("Content-Length") or 0), 0
            with open(step.dest, "wb") as f:
                async for chunk in resp.aiter_bytes(1 << 20):
                    f.write(chunk)
                    done += len(chunk)
                    if step.on_progress is not None:
                        step.on_progress(done, total)
        return None

    async def _paginate(self, path: str, params: dict[str, Any], model: type[M],
                        limit: int | None) -> AsyncIterator[M]:
        steps = paged(path, params, model, limit)
        step = advance(steps, None)
        while step is not None:
            if isinstance(step, Request):
                step = advance(steps, await self._arun(self._send_op(step)))
            else:
                yield step
                step = advance(steps, None)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
