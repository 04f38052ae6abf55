"""No route runs a database query on the event loop, where one slow query would stall every request
of the process: a route that takes a database session is a plain `def` (FastAPI runs it in its
threadpool), and the routes a dashboard polls read through app/reads.py (tests/core/test_reads.py).
The few that must be async are listed with their reason; they run their queries in the threadpool
(tests/deployments/test_off_loop.py watches them do it)."""

from __future__ import annotations

import inspect
from typing import Any

from fastapi.routing import APIRoute

from app.deps import get_session

# Async routes with a session, each for a reason; their queries run in the threadpool.
ASYNC_WITH_SESSION = {
    # Password hashing waits for a bounded slot without holding a connection (app/auth/router.py).
    "POST /api/auth/register", "POST /api/auth/token",
    # The multipart body is parsed on the loop; all the work runs in one threadpool call.
    "POST /api/datasets",
    # They await a model server, with a deadline (and /v1 relays its stream as it comes).
    "POST /api/invoke-model", "POST /api/v1/generate", "POST /v1/chat/completions", "POST /v1/completions",
}


def _uses_session(dependant: Any) -> bool:
    return any(d.call is get_session or _uses_session(d) for d in dependant.dependencies)


def _routes(routes: list[Any]) -> list[APIRoute]:
    """The API routes, those of included routers too (which FastAPI keeps apart, each with its router)."""
    out: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            out.append(route)
        elif hasattr(route, "original_router"):
            out.extend(_routes(route.original_router.routes))
    return out


def test_routes_with_a_session_run_in_the_threadpool(app: Any) -> None:
    on_loop = set()
    routes = _routes(app.routes)
    assert len(routes) > 40
    for route in routes:
        if _uses_session(route.dependant):
            for method in route.methods:
                if inspect.iscoroutinefunction(route.endpoint):
                    on_loop.add(f"{method} {route.path}")
    assert on_loop == ASYNC_WITH_SESSION
