"""/v1: the OpenAI-compatible routes. Authenticate with an API key (or a login token) as the Bearer."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError

from app.deployments.router import EndpointServiceDep
from app.deps import CurrentUser
from app.errors import AppError, NotFound
from app.openai import errors, service
from app.openai.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIModel,
    OpenAIModelList,
    TextCompletion,
)

router = APIRouter(prefix="/v1", tags=["openai"], route_class=errors.OpenAIRoute)
# With `stream: true` the answer is Server-Sent Events instead of the JSON body.
STREAMED = {"description": "The completion; with `stream: true`, `data: {chunk}` events then `data: [DONE]`",
            "content": {"text/event-stream": {"schema": {"type": "string"}}}}


def request_body(model: type[ChatCompletionRequest] | type[CompletionRequest]) -> dict[str, Any]:
    """The body's schema for /openapi.json (the route reads the body itself: see `_parse`), its
    $defs inlined since the document's components do not hold them."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}


async def _parse(request: Request, model: type[ChatCompletionRequest] | type[CompletionRequest]) -> Any:
    """The body, validated here rather than by FastAPI so that an unsupported field is a 400 naming it."""
    try:
        data = json.loads(await request.body())
    except ValueError as e:
        raise AppError(f"The body is not valid JSON: {e}", code="invalid_json") from e
    if not isinstance(data, dict):
        raise AppError("The body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise errors.validation_error(list(e.errors())) from e


@router.get("/models", responses={200: {"model": OpenAIModelList}})
def list_models(user: CurrentUser, svc: EndpointServiceDep) -> dict[str, Any]:
    """Your deployed models and the adapters attached to your base-model endpoints."""
    return service.list_models(svc, user)


@router.get("/models/{model}", responses={200: {"model": OpenAIModel}})
def retrieve_model(model: str, user: CurrentUser, svc: EndpointServiceDep) -> dict[str, Any]:
    for m in service.list_models(svc, user)["data"]:
        if m["id"] == model:
            return dict(m)
    raise NotFound(f"The model {model!r} does not exist or is not deployed", code="model_not_found", param="model")


@router.post("/chat/completions", openapi_extra=request_body(ChatCompletionRequest),
             responses={200: {"model": ChatCompletion, **STREAMED}})
async def chat_completions(request: Request, user: CurrentUser, svc: EndpointServiceDep) -> Any:
    """OpenAI's chat completion; the conversation is rendered with the template the model was trained with."""
    return await service.Completions(svc, request, user).create(await _parse(request, ChatCompletionRequest))


@router.post("/completions", openapi_extra=request_body(CompletionRequest),
             responses={200: {"model": TextCompletion, **STREAMED}})
async def completions(request: Request, user: CurrentUser, svc: EndpointServiceDep) -> Any:
    """OpenAI's (legacy) text completion: the prompt goes to the model as is."""
    return await service.Completions(svc, request, user).create(await _parse(request, CompletionRequest))
