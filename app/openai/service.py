"""Chat completions and completions on the caller's endpoints, as OpenAI shapes them.

`model` names an adapter attached to a base-model endpoint, or an endpoint's own model (its
model_name, endpoint name or registered model; app/deployments/service.endpoint_for_request). Streams relay
the model server's events as they arrive (no buffering): each text delta becomes one `data:` chunk,
then the finish reason, the usage when asked for, and `data: [DONE]`. Every answered request is
recorded with the adapter that served it (inference_records).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from app.auth.models import User
from app.deployments import adapters
from app.deployments.models import Endpoint, EndpointAdapter, InferenceRecord
from app.deployments.service import EndpointService, endpoint_for_request
from app.errors import AppError, Conflict, NotFound
from app.openai import errors
from app.openai.schemas import ChatCompletionRequest, CompletionRequest
from app.statuses import ENDPOINT_LIVE, EndpointStatus


def list_models(svc: EndpointService, user: User) -> dict[str, Any]:
    """The caller's deployed models (each live endpoint's own model) and attached adapters."""
    eps = list(svc.session.scalars(select(Endpoint).where(Endpoint.user_id == user.id,
                                                          Endpoint.status.in_(ENDPOINT_LIVE))
                                   .order_by(Endpoint.created_at)))
    attached = adapters.attached(svc.session, [e.id for e in eps])
    data: list[dict[str, Any]] = []
    for ep in eps:
        data.append(_model(ep.model_name, ep, user, None))
        data += [_model(a.name, ep, user, a) for a in attached[ep.id]]
    unique = {m["id"]: m for m in reversed(data)}  # a name on two endpoints: the first one listed answers
    return {"object": "list", "data": [m for m in data if unique[m["id"]] is m]}


def _model(name: str, ep: Endpoint, user: User, adapter: EndpointAdapter | None) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(ep.created_at.timestamp()), "owned_by": user.username,
            "endpoint": ep.endpoint_name, "parent": ep.model_name if adapter else None,
            "base_model": ep.base_model}


class Completions:
    def __init__(self, svc: EndpointService, request: Request, user: User) -> None:
        self.svc, self.request, self.user = svc, request, user

    def _serving(self, model: str) -> tuple[Endpoint, str | None]:
        """(endpoint, adapter) serving `model`, InService, the read ended: run in the threadpool."""
        found = endpoint_for_request(self.svc.session, self.user, model)
        if found is None:
            raise NotFound(f"The model {model!r} does not exist or is not deployed; GET /v1/models lists yours",
                           code="model_not_found", param="model")
        ep = found[0]
        if ep.status != EndpointStatus.IN_SERVICE:
            reason = f": {ep.failure_reason}" if ep.status == EndpointStatus.FAILED and ep.failure_reason else ""
            raise Conflict(f"The model {model!r} is not being served: endpoint {ep.endpoint_name!r} is "
                           f"{ep.status}{reason}", code="model_not_ready", param="model")
        self.svc.end_read()
        return found

    async def create(self, req: ChatCompletionRequest | CompletionRequest) -> Any:
        chat = isinstance(req, ChatCompletionRequest)
        ep, adapter = await run_in_threadpool(self._serving, req.model)
        meta = {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24], "created": int(time.time()),
                "model": req.model}
        record = {"user_id": self.user.id, "endpoint_id": ep.id, "adapter": adapter, "model": req.model,
                  "route": "chat.completions" if chat else "completions",
                  "api_key_id": (getattr(self.request.state, "api_key", None) or {}).get("id")}
        stream = getattr(self.svc.backends.endpoints, "invoke_stream", None)
        if req.stream and stream is not None:
            handle, payload = dict(ep.backend_handle), self.svc.payload(ep, adapter, req.payload())
            events = stream(handle, payload, self.svc.settings.invoke_timeout_seconds).__aiter__()
            first = await anext(events)  # an error before the first token is an HTTP error
            return StreamingResponse(self._sse(chat, req, meta, record, first, events), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        out = await self.svc.call(ep, req.payload(), adapter)
        text, usage, finish = _result(out)
        await run_in_threadpool(self._record, record, usage, False)
        if req.stream:  # a backend that cannot stream: the whole answer as one chunk
            return StreamingResponse(self._sse(chat, req, meta, record, {"text": text, **out}, None),
                                     media_type="text/event-stream")
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text, "refusal": None}
        else:
            choice["text"] = text
        return {**meta, "object": "chat.completion" if chat else "text_completion", "choices": [choice],
                "usage": usage, "system_fingerprint": None}

    async def _sse(self, chat: bool, req: Any, meta: dict[str, Any], record: dict[str, Any], first: dict[str, Any],
                   rest: AsyncIterator[dict[str, Any]] | None) -> AsyncIterator[bytes]:
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, finish: str | None, role: bool = False) -> bytes:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
                if text:
                    delta["content"] = text
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            extra = {"usage": None} if req.include_usage else {}
            return _data({**meta, "object": obj, "choices": [choice], **extra})

        if chat:
            yield chunk(None, None, role=True)
        event: dict[str, Any] | None = first
        try:
            while event is not None:
                if "error" in event:
                    err = event["error"]
                    yield _data(errors.body(500, str(err.get("message")), err.get("code"), err.get("param")))
                    return
                if event.get("text"):
                    yield chunk(event["text"], None)
                if "details" in event:
                    _, usage, finish = _result(event)
                    yield chunk(None, finish)
                    if req.include_usage:
                        yield _data({**meta, "object": obj, "choices": [], "usage": usage})
                    if rest is not None:
                        await run_in_threadpool(self._record, record, usage, True)
                    break
                event = await anext(rest) if rest is not None else None
        except AppError as e:  # the server failed mid-stream: the error is the last event
            yield _data(errors.body(e.status_code, e.message, e.code, e.param))
            return
        yield b"data: [DONE]\n\n"

    def _record(self, values: dict[str, Any], usage: dict[str, int], streamed: bool) -> None:
        with self.request.app.state.sessionmaker() as s:
            s.add(InferenceRecord(**values, streamed=streamed, prompt_tokens=usage["prompt_tokens"],
                                  completion_tokens=usage["completion_tokens"]))
            s.commit()


def _result(out: dict[str, Any]) -> tuple[str, dict[str, int], str]:
    details = out.get("details") or {}
    prompt, completion = int(details.get("prompt_tokens") or 0), int(details.get("completion_tokens") or 0)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return str(out.get("generated_text", "")), usage, "length" if details.get("finish_reason") == "length" else "stop"


def _data(obj: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()
