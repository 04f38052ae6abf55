"""Request-scoped dependencies. A route that takes a session is a plain `def`: FastAPI runs it in
its threadpool, and the session takes its connection there, so no query runs on the event loop and
no request holds a connection while it waits for a thread (the session is closed, its connection
returned, when the response is done; tests/core/test_event_loop.py lists the few async exceptions).

`current_user` is on every authenticated request (bench/api_load.py): it checks the token, then
reads the users row (app/auth/lookup.py: no Session; on PostgreSQL one round trip shared by the
lookups pending at the same moment). The row is read on every request: a deleted user's token stops
working at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase
from sqlalchemy.orm import Session

from app import idempotency
from app.api_keys.service import looks_like_key, user_row_for_key
from app.auth.lookup import detached_user, user_row
from app.auth.models import User
from app.backends.base import Backends
from app.config import Settings
from app.errors import Unauthorized
from app.reads import ReadDb, read_db
from app.storage import ObjectStore


async def get_session(request: Request) -> AsyncIterator[Session]:
    session: Session = request.app.state.sessionmaker()
    try:
        yield session
    finally:
        if session.in_transaction() or session.info.get(idempotency.PENDING_INFO):
            # A rollback, and a failed create giving its Idempotency-Key back: queries, so in the
            # threadpool (this teardown runs on the event loop), and finished even if the client left.
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(_finish, session)
        else:
            session.close()  # nothing to send: the connection went back to the pool at the last commit


def _finish(session: Session) -> None:
    idempotency.abandon_unfinished(session)
    session.close()


# Dependencies that do no I/O are `async def`: FastAPI runs a plain `def` dependency in the threadpool,
# a thread hop per dependency per request.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_store(request: Request) -> ObjectStore:
    return request.app.state.store  # type: ignore[no-any-return]


async def get_backends(request: Request) -> Backends:
    return request.app.state.backends


async def get_read_db(request: Request) -> ReadDb:
    return read_db(request)


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
BackendsDep = Annotated[Backends, Depends(get_backends)]
ReadDbDep = Annotated[ReadDb, Depends(get_read_db)]  # app/reads.py


class _CurrentUser(SecurityBase):
    """`Depends(current_user)`: the caller, from `Authorization: Bearer <JWT>`, as a detached `User`
    (no session is opened for it: `session.add(user)` before changing it). The token is checked
    (signature, `exp`, `iss`, `aud`; app/security.py) and the users row read on every request.

    A security scheme rather than a `Header()` parameter: OpenAPI documents it as HTTP bearer (the
    docs' "Authorize" button), and FastAPI has no header parameter to validate on every request; the
    header is read from the ASGI scope (bench/api_load.py)."""

    def __init__(self) -> None:
        self.model = HTTPBearerModel(bearerFormat="JWT", description="A token from POST /api/auth/token")
        self.scheme_name = "bearer"
        # For a route that calls `row()` itself rather than depending on this: its OpenAPI security.
        self.openapi: dict[str, Any] = {"security": [{self.scheme_name: []}]}

    async def __call__(self, request: Request) -> User:
        return detached_user(await self.row(request))

    @staticmethod
    async def row(request: Request) -> dict[str, Any]:
        """The caller's users row (column key -> value), or 401."""
        authorization = None
        for name, value in request.scope["headers"]:
            if name == b"authorization":  # ASGI: header names are lower-cased by the server
                authorization = value.decode("latin-1")
                break
        if not authorization:
            raise Unauthorized("Missing Authorization header: send `Authorization: Bearer <token>`",
                               code="missing_token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("Authorization header must be `Bearer <token>`", code="invalid_token")
        state = request.app.state
        if looks_like_key(token.strip()):  # an API key (app/api_keys): its owner, within its scope
            row = await user_row_for_key(request, token.strip())
        else:
            row = await user_row(state.sessionmaker, state.tokens.subject(token.strip()))
        if row is None:
            raise Unauthorized("The user this token was issued to no longer exists", code="invalid_token")
        return row


current_user = _CurrentUser()
CurrentUser = Annotated[User, Depends(current_user)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]
