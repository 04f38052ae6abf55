from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse

from app.deps import CurrentUser, IdempotencyKey, SessionDep
from app.registry.schemas import ModelCreate, ModelList, ModelRead
from app.registry.service import RegistryService

router = APIRouter(prefix="/api/models", tags=["registry"])


async def registry_service(session: SessionDep, user: CurrentUser) -> RegistryService:
    return RegistryService(session, user)


RegistryDep = Annotated[RegistryService, Depends(registry_service)]


@router.post("", status_code=201, response_model=ModelRead)
def create_model(req: ModelCreate, svc: RegistryDep, idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Register a Completed job's model under a name; saving a name again makes a new version."""
    status, body = svc.create(req, idempotency_key)
    return JSONResponse(body, status_code=status)


@router.get("", response_model=ModelList)
def list_models(
    svc: RegistryDep, limit: Annotated[int, Query(ge=1, le=100)] = 20, after: str | None = None,
    tag: Annotated[str | None, Query(max_length=64)] = None,
    model_name: Annotated[str | None, Query(max_length=63)] = None,
) -> ModelList:
    """Your registered models, newest first; filter by `tag` or `model_name`."""
    rows, has_more, cursor = svc.list(limit, after, tag, model_name)
    return ModelList(data=[ModelRead.of(m) for m in rows], has_more=has_more, next_cursor=cursor)


@router.get("/{model_id}", response_model=ModelRead)
def get_model(model_id: str, svc: RegistryDep) -> ModelRead:
    """One registered model version."""
    return ModelRead.of(svc.get(model_id))


@router.delete("/{model_id}", status_code=204)
def delete_model(model_id: str, svc: RegistryDep) -> Response:
    """Unregister a model version (the training job and its weights stay)."""
    svc.delete(model_id)
    return Response(status_code=204)
