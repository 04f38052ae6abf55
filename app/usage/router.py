from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.deps import CurrentUser, ReadDbDep
from app.reads import json_response
from app.usage.schemas import Usage
from app.usage.service import read_usage

router = APIRouter(prefix="/api", tags=["usage"])


@router.get("/usage", response_model=Usage)
async def get_usage(db: ReadDbDep, user: CurrentUser,
                    limit: Annotated[int, Query(ge=1, le=100)] = 20) -> Response:
    """Your training, inference and evaluation cost, in total, this month and per day (the last 30
    days), the newest `limit` jobs, endpoints and evaluations, and the budget left."""
    return json_response(await read_usage(db, user, limit))
