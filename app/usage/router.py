from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from app.deps import CurrentUser, SessionDep
from app.usage.schemas import Usage
from app.usage.service import UsageService

router = APIRouter(prefix="/api", tags=["usage"])


async def usage_service(session: SessionDep, user: CurrentUser) -> UsageService:
    return UsageService(session, user)


@router.get("/usage", response_model=Usage)
async def get_usage(svc: Annotated[UsageService, Depends(usage_service)]) -> Usage:
    """Your training, inference and evaluation cost, in total and this month, and the budget left."""
    return svc.summary()
