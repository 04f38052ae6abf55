from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from app.deps import BackendsDep, CurrentUser, IdempotencyKey, SessionDep, SettingsDep, StoreDep
from app.evaluation.metrics import catalogue
from app.evaluation.schemas import EvaluationCreate, EvaluationList, EvaluationRead, MetricInfo, MetricList
from app.evaluation.service import EvaluationService, evaluation_read

router = APIRouter(prefix="/api/evaluations", tags=["evaluation"])


async def evaluation_service(session: SessionDep, settings: SettingsDep, store: StoreDep, backends: BackendsDep,
                       user: CurrentUser) -> EvaluationService:
    return EvaluationService(session, settings, store, str(getattr(backends, "name", settings.backend)), user)


EvaluationDep = Annotated[EvaluationService, Depends(evaluation_service)]


@router.post("", status_code=202, response_model=EvaluationRead)
def create_evaluation(req: EvaluationCreate, svc: EvaluationDep,
                            idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Evaluate a model (job name, model_id or model name) against its base, in the background."""
    status, body = svc.create(req, idempotency_key)
    return JSONResponse(body, status_code=status)


@router.get("", response_model=EvaluationList)
def list_evaluations(
    svc: EvaluationDep, limit: Annotated[int, Query(ge=1, le=100)] = 20, after: str | None = None,
    status: Annotated[str | None, Query(pattern="^(Pending|InProgress|Completed|Failed)$")] = None,
    model: Annotated[str | None, Query(max_length=255)] = None,
) -> EvaluationList:
    """Your evaluations, newest first; filter by `status` or `model`."""
    rows, has_more, cursor = svc.list(limit, after, status, model)
    return EvaluationList(data=[evaluation_read(e) for e in rows], has_more=has_more, next_cursor=cursor)


@router.get("/metrics", response_model=MetricList)
async def list_metrics(_: CurrentUser) -> MetricList:
    """The metrics an evaluation can compute, with their range and better direction."""
    return MetricList(data=[MetricInfo(**m) for m in catalogue()])


@router.get("/{evaluation_id}", response_model=EvaluationRead)
def get_evaluation(evaluation_id: str, svc: EvaluationDep) -> EvaluationRead:
    """One evaluation: status, per-model metrics, improvement over the base, samples, forgetting probe."""
    return evaluation_read(svc.get(evaluation_id))
