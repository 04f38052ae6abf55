"""Deployment and inference routes: deploy, status, list, delete, events, invoke-model and /api/v1/generate."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from app.deployments import reads
from app.deployments.schemas import (
    DeployRequest,
    DeployResponse,
    EndpointList,
    EndpointRead,
    GenerateRequest,
    GenerateResponse,
    InvokeRequest,
    InvokeResponse,
)
from app.deployments.service import EndpointService
from app.deps import BackendsDep, CurrentUser, IdempotencyKey, ReadDbDep, SessionDep, SettingsDep, StoreDep
from app.events import Event, EventRead
from app.reads import json_response
from app.statuses import EndpointStatus

router = APIRouter(tags=["deployments"])



async def endpoint_service(session: SessionDep, settings: SettingsDep, store: StoreDep,
                     backends: BackendsDep) -> EndpointService:
    return EndpointService(session, settings, store, backends)


EndpointServiceDep = Annotated[EndpointService, Depends(endpoint_service)]


@router.post("/api/deploy-model", status_code=202, response_model=DeployResponse)
def deploy_model(data: DeployRequest, user: CurrentUser, svc: EndpointServiceDep,
                 idempotency_key: IdempotencyKey = None) -> DeployResponse:
    """Deploy a trained model to an endpoint named `{model_name}-endpoint` (answers at once: Creating)."""
    return svc.deploy(user, data, idempotency_key)


# The routes a dashboard polls: one statement each, off the event loop (app/reads.py).
@router.get("/api/endpoint-status/{endpoint_name}", response_model=EndpointRead)
async def endpoint_status(endpoint_name: str, db: ReadDbDep, user: CurrentUser) -> Response:
    """One endpoint's status, failure reason and cost so far."""
    return json_response(await reads.endpoint(db, user, endpoint_name))


@router.get("/api/endpoints", response_model=EndpointList)
async def list_endpoints(
    db: ReadDbDep, user: CurrentUser,
    status: EndpointStatus | None = None, include_deleted: bool = False,
    limit: Annotated[int, Query(ge=1, le=100)] = 20, after: str | None = None,
) -> Response:
    """The caller's endpoints, newest first (deleted ones only with include_deleted=true)."""
    return json_response(await reads.endpoint_page(db, user, status, include_deleted, limit, after))


@router.delete("/api/endpoint/{endpoint_name}", status_code=202, response_model=EndpointRead)
def delete_endpoint(endpoint_name: str, user: CurrentUser, svc: EndpointServiceDep) -> EndpointRead:
    """Start deleting an endpoint; its cost stops accruing now."""
    return svc.delete(user, endpoint_name)


@router.get("/api/endpoint/{endpoint_name}/events", response_model=list[EventRead])
def endpoint_events(endpoint_name: str, user: CurrentUser, svc: EndpointServiceDep) -> list[Event]:
    """An endpoint's status changes and errors, oldest first."""
    return svc.events(user, endpoint_name)


@router.post("/api/invoke-model", response_model=InvokeResponse)
async def invoke_model(data: InvokeRequest, user: CurrentUser, svc: EndpointServiceDep) -> InvokeResponse:
    """Generate text with an InService endpoint."""
    return await svc.invoke(user, data)


@router.post("/api/v1/generate", response_model=GenerateResponse)
async def generate(data: GenerateRequest, user: CurrentUser, svc: EndpointServiceDep) -> GenerateResponse:
    """Generate with a deployed model named by endpoint, registered model id or name; returns the completion."""
    return await svc.generate(user, data)
