from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from app import catalog
from app.deps import BackendsDep, CurrentUser, IdempotencyKey, ReadDbDep, SessionDep, SettingsDep, StoreDep
from app.events import EventRead
from app.reads import json_response
from app.training import actions, reads
from app.training.schemas import (
    BaseModelList,
    CostEstimate,
    CostEstimateRequest,
    InstanceTypeList,
    JobActions,
    MetricPoint,
    ModelDownload,
    TrainingJobCreate,
    TrainingJobList,
    TrainingJobRead,
)
from app.training.service import TrainingService

router = APIRouter(prefix="/api", tags=["training"])


async def training_service(session: SessionDep, settings: SettingsDep, store: StoreDep, backends: BackendsDep,
                     user: CurrentUser) -> TrainingService:
    return TrainingService(session, settings, store, backends, user)


ServiceDep = Annotated[TrainingService, Depends(training_service)]


@router.get("/base-models", response_model=BaseModelList)
async def base_models(settings: SettingsDep, _: CurrentUser) -> dict[str, Any]:
    """The base-model catalogue."""
    models = [{k: v for k, v in m.items() if k != "source"} for m in catalog.base_models(settings)]
    return {"data": models}


@router.get("/instance-types", response_model=InstanceTypeList)
async def instance_types(settings: SettingsDep, _: CurrentUser) -> dict[str, Any]:
    """Instance types with training and inference prices per hour (USD)."""
    data = [{"name": k, "accelerator": v["accelerator"], "gpus": v["gpus"], "gpu_memory_gib": v["gpu_memory_gib"],
             "training_price_per_hour": v.get("training"), "inference_price_per_hour": v.get("inference"),
             "backends": v["backends"], "available": settings.backend in v["backends"]}
            for k, v in catalog.instance_types(settings).items()]
    return {"data": data, "currency": "USD", "backend": settings.backend}


@router.post("/cost-estimate", response_model=CostEstimate)
def cost_estimate(req: CostEstimateRequest, svc: ServiceDep) -> dict[str, Any]:
    """Estimate a job's tokens, duration and cost before starting it."""
    return svc.estimate(req)


@router.post("/training-job", status_code=201, response_model=TrainingJobRead)
def create_job(req: TrainingJobCreate, svc: ServiceDep, idem: IdempotencyKey = None) -> JSONResponse:
    """Start a fine-tuning job."""
    status, body = svc.create(req, idem)
    return JSONResponse(body, status_code=status)


# The routes a dashboard polls: one statement each, off the event loop (app/reads.py).
@router.get("/training-jobs", response_model=TrainingJobList)
async def list_jobs(db: ReadDbDep, user: CurrentUser, limit: int = Query(20, ge=1, le=100), after: str | None = None,
              status: str | None = Query(None, pattern="^(InProgress|Completed|Failed|Stopping|Stopped)$"),
              ) -> Response:
    """The caller's jobs, newest first."""
    return json_response(await reads.job_page(db, user, limit, after, status))


@router.get("/training-job/{job_name}", response_model=TrainingJobRead)
async def get_job(job_name: str, db: ReadDbDep, user: CurrentUser) -> Response:
    """One job: status, metrics, cost, progress, error."""
    return json_response(await reads.job(db, user, job_name))


@router.post("/training-job/{job_name}/stop", status_code=202, response_model=TrainingJobRead)
def stop_job(job_name: str, svc: ServiceDep) -> dict[str, Any]:
    """Stop a running job (Stopping, then Stopped)."""
    return reads.orm_job_body(svc.stop(job_name))


@router.get("/training-job/{job_name}/events", response_model=list[EventRead])
async def job_events(job_name: str, db: ReadDbDep, user: CurrentUser) -> Response:
    """Status changes, epochs, evaluations, checkpoints and errors."""
    return json_response(await reads.job_events(db, user, job_name))


@router.get("/training-job/{job_name}/metrics", response_model=list[MetricPoint])
async def job_metrics(job_name: str, db: ReadDbDep, user: CurrentUser, metric_name: str | None = None) -> Response:
    """Metric time series (train_loss, eval_loss, learning_rate, tokens_per_second, grad_norm)."""
    return Response(await reads.job_metrics(db, user, job_name, metric_name), media_type="application/json")


@router.get("/training-job-actions/{job_name}", response_model=JobActions)
def job_actions(job_name: str, svc: ServiceDep) -> JobActions:
    """Which of download / deploy / evaluate / register / stop apply now."""
    return actions.for_job(svc.owned(job_name))


@router.get("/model-download/{job_name}", response_model=ModelDownload,
            responses={409: {"description": "The job has no model to download yet (not Completed)"}})
def model_download(job_name: str, svc: ServiceDep, request: Request) -> dict[str, Any]:
    """A link to model.tar.gz that works without a token for an hour."""
    return svc.download(job_name)
