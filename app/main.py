"""create_app(): routers, error handlers, lifespan (engine, store, backends, worker)."""

from __future__ import annotations

import gc
import importlib
import logging
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import __version__, reads, wiring
from app.auth.ratelimit import LoginThrottle
from app.backends.base import Backends
from app.config import Settings, get_settings
from app.datasets import parallel
from app.errors import AppError, install_openapi_errors
from app.headers import SecurityHeadersMiddleware
from app.limits import BodyLimitMiddleware
from app.runtime import SessionFactory, wake
from app.security import Passwords, Tokens, ensure_jwt_secret
from app.storage import ObjectStore
from app.web import mount_web
from app.worker import Worker

log = logging.getLogger("llmtuner")

GC_YOUNG_THRESHOLD = 10_000  # gc.set_threshold's first value in a served process (CPython's default: 700)

# The routers of the routes a dashboard polls come first: a request is matched against the routes in order.
DOMAIN_ROUTERS = [
    "app.auth.router", "app.training.router", "app.deployments.router", "app.usage.router", "app.health",
    "app.files", "app.datasets.router", "app.registry.router", "app.evaluation.router",
    "app.api_keys.router", "app.deployments.adapter_router", "app.openai.router",
]


def create_app(
    settings: Settings | None = None,
    *,
    sessionmaker: SessionFactory | None = None,
    store: ObjectStore | None = None,
    backends: Backends | None = None,
    backends_factory: wiring.BackendsFactory | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    ensure_jwt_secret(settings)  # before anything signs with it (tokens, download links, API keys)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = wiring.build(settings, sessionmaker=app.state.sessionmaker, store=app.state.store,
                                backends=app.state.backends, backends_factory=backends_factory)
        app.state.sessionmaker, app.state.store = services.sessionmaker, services.store
        app.state.backends = services.backends
        bind = services.sessionmaker.kw["bind"]
        read_pool = await reads.open_pool(bind)
        app.state.read_db = reads.ReadDb(bind, read_pool)
        # Move everything allocated at start-up out of the collector's reach: full collections then
        # scan only request garbage, which keeps them from stalling the event loop (tail latency).
        # And collect the young generation less often: the objects of the requests in flight alone
        # trigger it every few requests at CPython's default threshold, and it finds nothing to free.
        if settings.env != "test":  # (a test process starts many apps; their garbage must stay collectable)
            gc.collect()
            gc.freeze()
            gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        if settings.dataset_worker_count > 1:  # large uploads are validated by worker processes
            parallel.warm_up()
        stop = threading.Event()
        thread = None
        if settings.worker.enabled:
            worker = Worker(services.sessionmaker, services.store, services.backends, settings)
            app.state.worker = worker
            thread = threading.Thread(target=worker.run_forever, args=(stop,), name="worker", daemon=True)
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread is not None:
                wake()  # end its wait for the next poll
                thread.join(timeout=10)
            if read_pool is not None:
                await read_pool.close()
            services.close()

    app = FastAPI(
        title="LLM Tuner", version=__version__, lifespan=lifespan,
        description="Fine-tune open models with LoRA, evaluate, deploy, invoke and download.",
    )
    app.state.settings = settings
    app.state.sessionmaker = sessionmaker
    app.state.store = store
    app.state.backends = backends
    app.state.worker = None
    app.state.passwords = Passwords(settings)
    app.state.tokens = Tokens(settings)
    app.state.login_throttle = LoginThrottle(
        settings.auth.max_failed_logins, settings.auth.failed_login_window_seconds,
        settings.auth.max_concurrent_logins,
    )
    app.add_middleware(
        CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=True,
        allow_methods=["*"], allow_headers=["*"],
    )
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(
        BodyLimitMiddleware, default_limit=settings.max_request_body_bytes,
        upload_limit=settings.max_upload_bytes, upload_paths=("/api/datasets",),
    )
    install_error_handlers(app)
    install_openapi_errors(app)
    for name in DOMAIN_ROUTERS:
        app.include_router(importlib.import_module(name).router)
    mount_web(app)  # the dashboard at / (its own paths only; after the API's routes)
    return app


def _param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "form", "cookie"):
        parts = parts[1:]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            e = next(e for e in errors if e.get("type") == "json_invalid")
            pos = e.get("loc", [None, None])[-1]
            return JSONResponse(AppError(
                f"Request body is not valid JSON (at character {pos}): {e.get('ctx', {}).get('error', '')}",
                code="invalid_json").body(), status_code=400)
        details = [{"param": _param(tuple(e.get("loc", ()))), "message": e.get("msg"), "type": e.get("type")}
                   for e in errors]
        first = details[0] if details else {"param": None, "message": "Invalid request"}
        msg = f"{first['param']}: {first['message']}" if first["param"] else str(first["message"])
        if len(details) > 1:
            msg += f" (and {len(details) - 1} more problem{'s' if len(details) > 2 else ''})"
        return JSONResponse(AppError(msg, code="validation_error", param=first["param"], details=details).body(),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        msg = "No such route" if exc.status_code == 404 and exc.detail == "Not Found" else str(exc.detail)
        return JSONResponse(AppError(msg, code=codes.get(exc.status_code, "http_error")).body(),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        error_id = uuid.uuid4().hex[:12]
        log.exception("unhandled error %s on %s %s", error_id, request.method, request.url.path)
        return JSONResponse(AppError(
            f"Internal error; quote id {error_id} when reporting it", code="internal_error",
            details=[{"error_id": error_id}]).body(), status_code=500)
