"""API key routes: create (the secret is returned once), list, revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from app.api_keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyList
from app.api_keys.service import ApiKeyService
from app.deps import CurrentUser, SessionDep, SettingsDep

router = APIRouter(prefix="/api/api-keys", tags=["api keys"])


def api_key_service(session: SessionDep, settings: SettingsDep) -> ApiKeyService:
    return ApiKeyService(session, settings)


ServiceDep = Annotated[ApiKeyService, Depends(api_key_service)]


@router.post("", status_code=201, response_model=ApiKeyCreated)
def create_key(data: ApiKeyCreate, user: CurrentUser, svc: ServiceDep) -> ApiKeyCreated:
    """Create an API key; `key` in the answer is the secret, shown this once only."""
    return svc.create(user.id, data)


@router.get("", response_model=ApiKeyList)
def list_keys(user: CurrentUser, svc: ServiceDep) -> ApiKeyList:
    """The caller's active keys (prefix, name, scope, created, expires, last used), newest first."""
    return svc.list_for(user.id)


@router.delete("/{key_id}", status_code=204)
def revoke_key(key_id: str, user: CurrentUser, svc: ServiceDep) -> Response:
    """Revoke a key: requests presenting it are refused from now on."""
    svc.revoke(user.id, key_id)
    return Response(status_code=204)
