"""client.endpoints: deploy, get, list, wait, invoke, events, delete."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from llmtuner._core import Op, Request, Resource, Sleep, async_op, ident, new_idempotency_key, seg, sync_op
from llmtuner.errors import EndpointFailedError, WaitTimeoutError
from llmtuner.types import Deployment, Endpoint, Event, GenerationParameters, InvokeResult


class _EndpointOps(Resource):
    def _deploy(self, job: Any = None, *, model_name: str, model_s3_uri: str | None = None,
                model_id: str | None = None, base_model: str | None = None,
                adapters: list[str | dict[str, str]] | None = None, instance_type: str | None = None,
                initial_instance_count: int | None = None, idempotency_key: str | None = None) -> Op[Deployment]:
        """Deploy a trained model (a job, its name, a registered `model_id` or a `model_s3_uri`) to the endpoint
        `{model_name}-endpoint`; or a `base_model` serving several `adapters` (job names, or
        `{"job_name" | "model_id", "name"}`). Answers at once with status Creating: `wait()` for InService."""
        refs = None if adapters is None else [{"job_name": a} if isinstance(a, str) else a for a in adapters]
        body = {"job_name": None if job is None else ident(job, "job_name"), "model_s3_uri": model_s3_uri,
                "model_id": model_id, "base_model": base_model, "adapters": refs, "model_name": model_name,
                "instance_type": instance_type, "initial_instance_count": initial_instance_count}
        out = yield Request("POST", "/api/deploy-model", json={k: v for k, v in body.items() if v is not None},
                            idempotency_key=idempotency_key or new_idempotency_key())
        return Deployment.model_validate(out)

    def _get(self, endpoint_name: str) -> Op[Endpoint]:
        """An endpoint's status, failure reason and cost so far."""
        return Endpoint.model_validate((yield Request("GET", f"/api/endpoint-status/{seg(endpoint_name)}")))

    def _wait(self, endpoint_name: str, *, poll_interval: float = 2.0, timeout: float | None = 600.0) -> Op[Endpoint]:
        """Poll until the endpoint is InService (EndpointFailedError when it fails)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ep = yield from self._get(endpoint_name)
            if ep.status == "InService":
                return ep
            if ep.status in ("Failed", "OutOfService", "Deleting", "Deleted"):
                raise EndpointFailedError(endpoint_name, ep.failure_reason or ep.status)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(f"Endpoint {endpoint_name} is still {ep.status} after {timeout} s")
            yield Sleep(poll_interval)

    def _invoke(self, endpoint_name: str, input_text: str, parameters: GenerationParameters | dict[str, Any] | None
                = None, **params: Any) -> Op[InvokeResult]:
        """Generate with an InService endpoint; parameters: max_new_tokens, temperature, top_p, top_k,
        do_sample, repetition_penalty, stop, seed (as a GenerationParameters, a dict or keywords)."""
        if isinstance(parameters, GenerationParameters):
            parameters = parameters.model_dump(exclude_none=True)
        merged = {**(parameters or {}), **params}
        body = {"endpoint_name": endpoint_name, "input_text": input_text, "parameters": merged or None}
        # Generation changes nothing on the server: safe to send again after a dropped connection.
        out = yield Request("POST", "/api/invoke-model", json=body, replayable=True)
        return InvokeResult.model_validate(out["result"])

    def _events(self, endpoint_name: str) -> Op[list[Event]]:
        """Status changes and errors, oldest first."""
        out = yield Request("GET", f"/api/endpoint/{seg(endpoint_name)}/events")
        return [Event.model_validate(e) for e in out]

    def _delete(self, endpoint_name: str) -> Op[Endpoint]:
        """Start deleting the endpoint; its cost stops accruing now."""
        return Endpoint.model_validate((yield Request("DELETE", f"/api/endpoint/{seg(endpoint_name)}")))


class Endpoints(_EndpointOps):
    deploy = sync_op(_EndpointOps._deploy)
    get = sync_op(_EndpointOps._get)
    wait = sync_op(_EndpointOps._wait)
    invoke = sync_op(_EndpointOps._invoke)
    events = sync_op(_EndpointOps._events)
    delete = sync_op(_EndpointOps._delete)

    def list(self, *, status: str | None = None, include_deleted: bool = False,
             limit: int | None = None) -> Iterator[Endpoint]:
        """The caller's endpoints, newest first, fetched page by page as you iterate."""
        return self._client._paginate(  # type: ignore[no-any-return]
            "/api/endpoints", {"status": status, "include_deleted": include_deleted or None}, Endpoint, limit)


class AsyncEndpoints(_EndpointOps):
    deploy = async_op(_EndpointOps._deploy)
    get = async_op(_EndpointOps._get)
    wait = async_op(_EndpointOps._wait)
    invoke = async_op(_EndpointOps._invoke)
    events = async_op(_EndpointOps._events)
    delete = async_op(_EndpointOps._delete)

    def list(self, *, status: str | None = None, include_deleted: bool = False,
             limit: int | None = None) -> AsyncIterator[Endpoint]:
        return self._client._paginate(  # type: ignore[no-any-return]
            "/api/endpoints", {"status": status, "include_deleted": include_deleted or None}, Endpoint, limit)
