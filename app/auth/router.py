from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.concurrency import run_in_threadpool

from app.auth.models import User
from app.auth.ratelimit import normalise_username
from app.auth.schemas import BudgetUpdate, Token, UserCreate, UserRead
from app.auth.service import AuthService
from app.deps import CurrentUser, SessionDep, SettingsDep, current_user
from app.errors import NotFound

router = APIRouter(prefix="/api/auth", tags=["auth"])


def auth_service(session: SessionDep, settings: SettingsDep, request: Request) -> AuthService:
    return AuthService(session, settings, request.app.state.passwords)


AuthDep = Annotated[AuthService, Depends(auth_service)]


@router.post("/register", status_code=201, response_model=UserRead)
async def register(data: UserCreate, svc: AuthDep, request: Request) -> User:
    """Create an account."""
    svc.check_password_rules(data)
    # Queries run in the threadpool (this route is async for the hashing slots); the pooled
    # connection is handed back before waiting for a slot.
    await run_in_threadpool(svc.ensure_free, data, close=True)
    throttle = request.app.state.login_throttle
    async with throttle.slots:
        password_hash = await run_in_threadpool(svc.passwords.hash, data.password)
    return await run_in_threadpool(svc.create, data, password_hash)


@router.post("/token", response_model=Token)
async def token(
    svc: AuthDep, request: Request, settings: SettingsDep,
    username: Annotated[str, Form(max_length=64)], password: Annotated[str, Form(max_length=256)],
) -> Token:
    """Log in with the OAuth2 password form; returns a bearer token."""
    throttle = request.app.state.login_throttle
    name = normalise_username(username)
    address = request.client.host if request.client else "unknown"
    throttle.check(address, name)
    # In the threadpool, and the pooled connection handed back (`user` keeps its loaded attributes)
    # before waiting for a hashing slot and a thread: requests queued there must not hold
    # connections, or a burst of logins empties the pool for everyone else.
    user = await run_in_threadpool(svc.find_for_login, name, close=True)
    async with throttle.slots:
        ok = await run_in_threadpool(svc.passwords.verify, user.password_hash if user else None, password)
    if not ok or user is None:
        throttle.failed(address, name)
        raise svc.login_failed()
    throttle.succeeded(address, name)
    return Token(access_token=request.app.state.tokens.issue(user.id),
                 expires_in=settings.jwt.lifetime_seconds)


@router.get("/me", response_model=UserRead, openapi_extra=current_user.openapi)
async def me(request: Request) -> Response:
    """The caller."""
    # The hot authenticated route (bench/api_load.py): the row is read as for `CurrentUser`, but with
    # no dependency to solve, no ORM object and no second validation of the response model.
    user = UserRead.model_validate(await current_user.row(request))
    return Response(user.model_dump_json(), media_type="application/json")


@router.put("/users/{username}/budget", response_model=UserRead)
def set_budget(username: str, data: BudgetUpdate, user: CurrentUser, session: SessionDep,
                     svc: AuthDep) -> User:
    """Set a user's monthly budget in USD (admins only; null removes it)."""
    target = svc.find_for_login(username)
    if not user.is_admin or target is None:
        raise NotFound(f"No user {username!r}", param="username")
    target.monthly_budget = data.monthly_budget
    session.commit()
    return target
