from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from app.datasets.models import Dataset
from app.datasets.schemas import DatasetList, DatasetPreview, DatasetRead
from app.datasets.service import DatasetService
from app.deps import CurrentUser, SessionDep, SettingsDep, StoreDep

router = APIRouter(prefix="/api/datasets", tags=["datasets"])


async def dataset_service(session: SessionDep, settings: SettingsDep, store: StoreDep,
                          user: CurrentUser) -> DatasetService:
    return DatasetService(session, settings, store, user)


ServiceDep = Annotated[DatasetService, Depends(dataset_service)]


@router.post("", status_code=201, response_model=DatasetRead)
async def upload(
    svc: ServiceDep,
    file: Annotated[UploadFile, File(description="JSONL, JSON, CSV/TSV or plain text")],
    name: Annotated[str | None, Form(max_length=255)] = None,
    format: Annotated[str | None, Form(max_length=32, description="override detection")] = None,
    prompt_column: Annotated[str | None, Form(max_length=255)] = None,
    response_column: Annotated[str | None, Form(max_length=255)] = None,
    base_model: Annotated[str | None, Form(max_length=255, description="compute token statistics")] = None,
    max_length: Annotated[int | None, Form(ge=16, le=32768)] = None,
) -> Dataset:
    """Upload a dataset; it is validated and converted, and kept even when invalid."""
    return await run_in_threadpool(svc.create, file.file, file.filename or "upload", name, format,
                                   prompt_column, response_column, base_model, max_length)


@router.get("", response_model=DatasetList)
def list_datasets(svc: ServiceDep, limit: int = Query(20, ge=1, le=100), after: str | None = None
                        ) -> DatasetList:
    """The caller's datasets, newest first."""
    rows, more, nxt = svc.list_datasets(limit, after)
    return DatasetList(data=[DatasetRead.model_validate(r) for r in rows], has_more=more, next_cursor=nxt)


@router.get("/{dataset_id}", response_model=DatasetRead)
def get_dataset(dataset_id: str, svc: ServiceDep, base_model: str | None = None,
                      max_length: int | None = Query(None, ge=16, le=32768)) -> Dataset:
    """One dataset with its validation report (token statistics for `base_model` when given)."""
    ds = svc.owned(dataset_id)
    if base_model:
        ds = svc.token_stats_for(ds, base_model, max_length)
    return ds


@router.get("/{dataset_id}/preview", response_model=DatasetPreview)
def preview(dataset_id: str, svc: ServiceDep, limit: int = Query(5, ge=1, le=100)) -> DatasetPreview:
    """The first records as converted to the training format."""
    ds = svc.owned(dataset_id)
    rows = svc.preview(ds, limit)
    return DatasetPreview(dataset_id=ds.id, format=ds.format, data=rows)


@router.delete("/{dataset_id}", status_code=204)
def delete(dataset_id: str, svc: ServiceDep) -> Response:
    """Delete a dataset and its files (409 while a running job uses it)."""
    svc.delete(dataset_id)
    return Response(status_code=204)
