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
from app.openai.schemas import ChatCompletionRequest, CompletionRequest

router = APIRouter(prefix="/v1", tags=["openai"], route_class=errors.OpenAIRoute)


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


@router.get("/models")
async def list_models(user: CurrentUser, svc: EndpointServiceDep) -> dict[str, Any]:
    """Your deployed models and the adapters attached to your base-model endpoints."""
    return service.list_models(svc, user)


@router.get("/models/{model}")
async def retrieve_model(model: str, user: CurrentUser, svc: EndpointServiceDep) -> dict[str, Any]:
    for m in service.list_models(svc, user)["data"]:
        if m["id"] == model:
            return dict(m)
    raise NotFound(f"The model {model!r} does not exist or is not deployed", code="model_not_found", param="model")


@router.post("/chat/completions")
async def chat_completions(request: Request, user: CurrentUser, svc: EndpointServiceDep) -> Any:
    """OpenAI's chat completion; the conversation is rendered with the template the model was trained with."""
    return await service.Completions(svc, request, user).create(await _parse(request, ChatCompletionRequest))


@router.post("/completions")
async def completions(request: Request, user: CurrentUser, svc: EndpointServiceDep) -> Any:
    """OpenAI's (legacy) text completion: the prompt goes to the model as is."""
    return await service.Completions(svc, request, user).create(await _parse(request, CompletionRequest))
