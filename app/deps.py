"""Request-scoped dependencies. Routes are `async def` and call the sync session inline:
no thread hop holds a pooled connection while waiting for a thread (see PERF-NOTES)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from app.auth.models import User
from app.config import Settings
from app.errors import Unauthorized
from app.storage import ObjectStore


async def get_session(request: Request) -> AsyncIterator[Session]:
    session: Session = request.app.state.sessionmaker()
    try:
        yield session
    finally:
        session.close()


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_store(request: Request) -> ObjectStore:
    return request.app.state.store  # type: ignore[no-any-return]


def get_backends(request: Request) -> Any:
    return request.app.state.backends


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
BackendsDep = Annotated[Any, Depends(get_backends)]


async def current_user(
    request: Request, session: SessionDep, authorization: Annotated[str | None, Header()] = None
) -> User:
    if not authorization:
        raise Unauthorized("Missing Authorization header: send `Authorization: Bearer <token>`",
                           code="missing_token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Authorization header must be `Bearer <token>`", code="invalid_token")
    user_id = request.app.state.tokens.subject(token.strip())
    user = session.get(User, user_id)
    if user is None:
        raise Unauthorized("The user this token was issued to no longer exists", code="invalid_token")
    return user


CurrentUser = Annotated[User, Depends(current_user)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]
