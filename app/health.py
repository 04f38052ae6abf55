from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text

from app import __version__

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str = Field(description="ok, or error (then the answer is a 503 that also carries `error`)")
    database: str = Field(description="ok, or error: <exception class>")
    storage: str = Field(description="ok, or error: <exception class>")
    backend: str
    version: str


# Documentation only: the route answers its own JSONResponse (a 503 is this body plus the API's `error`).
@router.get("/api/health", responses={200: {"model": Health}})
async def health(request: Request) -> JSONResponse:
    """Liveness and readiness: checks the database and the object store for real."""
    state = request.app.state
    body = {"status": "ok", "database": "ok", "storage": "ok", "backend": state.settings.backend,
            "version": __version__}
    try:
        with state.sessionmaker() as s:
            s.execute(text("SELECT 1"))
    except Exception as e:  # noqa: BLE001 - any failure means the database is down
        body["database"] = f"error: {type(e).__name__}"
    try:
        await run_in_threadpool(state.store.health)
    except Exception as e:  # noqa: BLE001
        body["storage"] = f"error: {type(e).__name__}"
    failing = [k for k in ("database", "storage") if body[k] != "ok"]
    if failing:
        body["status"] = "error"
        body["error"] = {"code": "service_unavailable", "message": f"{', '.join(failing)} unavailable",
                         "param": None, "details": None}
        return JSONResponse(body, status_code=503)
    return JSONResponse(body)
