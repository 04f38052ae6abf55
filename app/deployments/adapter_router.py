"""Attach and detach LoRA adapters on a running base-model endpoint (app/deployments/adapters.py), and
what each adapter of an endpoint served."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from app.deployments.adapters import AdapterService
from app.deployments.schemas import AdapterRead, AdapterRef, AdapterUsage
from app.deps import BackendsDep, CurrentUser, SessionDep, StoreDep

router = APIRouter(prefix="/api/endpoint/{endpoint_name}", tags=["deployments"])


def adapter_service(session: SessionDep, store: StoreDep, backends: BackendsDep) -> AdapterService:
    return AdapterService(session, store, backends)


AdapterServiceDep = Annotated[AdapterService, Depends(adapter_service)]


@router.get("/adapters", response_model=list[AdapterRead], responses={409: {
    "description": "The endpoint serves one model (not a base model), or is Deleting or Failed"}})
def list_adapters(endpoint_name: str, user: CurrentUser, svc: AdapterServiceDep) -> list[AdapterRead]:
    """The adapters attached to a base-model endpoint."""
    return svc.list_for(user, endpoint_name)


@router.post("/adapters", status_code=201, response_model=AdapterRead)
def attach_adapter(endpoint_name: str, data: AdapterRef, user: CurrentUser, svc: AdapterServiceDep) -> AdapterRead:
    """Attach an adapter trained on the endpoint's base model; a running server takes it without restarting."""
    return svc.attach(user, endpoint_name, data)


@router.delete("/adapters/{adapter_name}", response_model=AdapterRead)
def detach_adapter(endpoint_name: str, adapter_name: str, user: CurrentUser,
                   svc: AdapterServiceDep) -> AdapterRead:
    """Detach an adapter: the server unloads it and frees its memory; the endpoint keeps running."""
    return svc.detach(user, endpoint_name, adapter_name)


@router.get("/usage", response_model=list[AdapterUsage])
def endpoint_usage(endpoint_name: str, user: CurrentUser, svc: AdapterServiceDep) -> list[AdapterUsage]:
    """Requests answered through /v1 by this endpoint, per adapter (`adapter` null: its own model)."""
    return svc.usage(user, endpoint_name)
