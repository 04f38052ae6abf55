"""API keys: create (the secret is shown once), list, revoke, and authenticate a request by one.

A key is `llmt_` + 32 random bytes (URL-safe base64). Only HMAC-SHA256(server secret, key) is
stored: for a secret that carries 256 bits of entropy a fast keyed hash is enough (nothing to brute
force, unlike a password), and it lets a request find its key with one indexed lookup. The stored
and computed digests are compared with `hmac.compare_digest` anyway. The server secret is derived
from the JWT secret, so rotating that secret also invalidates every API key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.api_keys.models import ApiKey
from app.api_keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyList, ApiKeyRead
from app.auth.lookup import user_row
from app.config import Settings
from app.db import utcnow
from app.errors import AppError, Conflict, NotFound, Unauthorized, ValidationFailed

KEY_PREFIX = "llmt_"
SHOWN_CHARS = 12  # "llmt_" and 7 characters of the secret, shown in listings
MAX_ACTIVE_KEYS = 100
LAST_USED_RESOLUTION = timedelta(seconds=60)  # last_used_at is written at most once a minute per key

# What a key of scope "inference" may call besides /v1/*: generation and reading endpoints.
INFERENCE_ROUTES = {
    ("POST", "/api/invoke-model"), ("POST", "/api/v1/generate"), ("GET", "/api/endpoints"),
    ("GET", "/api/endpoint-status/{endpoint_name}"), ("GET", "/api/endpoint/{endpoint_name}/events"),
    ("GET", "/api/endpoint/{endpoint_name}/adapters"), ("GET", "/api/endpoint/{endpoint_name}/usage"),
    ("GET", "/api/auth/me"),
}


def hmac_key(settings: Settings) -> bytes:
    return hashlib.sha256(b"llmtuner-api-keys:" + settings.jwt.secret.get_secret_value().encode()).digest()


def digest(key: bytes, secret: str) -> str:
    return hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()


def looks_like_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)


class ApiKeyService:
    def __init__(self, session: Session, settings: Settings) -> None:
        self.session, self.key = session, hmac_key(settings)

    def create(self, user_id: str, data: ApiKeyCreate) -> ApiKeyCreated:
        now = utcnow()
        expires = data.expires_at or (now + timedelta(days=data.expires_in_days) if data.expires_in_days else None)
        if expires is not None and expires <= now:
            raise ValidationFailed("expires_at must be in the future", param="expires_at")
        active = self.session.scalars(select(ApiKey.id).where(
            ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))).all()
        if len(active) >= MAX_ACTIVE_KEYS:
            raise Conflict(f"At most {MAX_ACTIVE_KEYS} active API keys per user; revoke one first",
                           code="too_many_api_keys")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(user_id=user_id, name=data.name, prefix=secret[:SHOWN_CHARS], scope=data.scope,
                     secret_hash=digest(self.key, secret), created_at=now, expires_at=expires)
        self.session.add(row)
        self.session.commit()
        return ApiKeyCreated(**ApiKeyRead.model_validate(row).model_dump(), key=secret)

    def list_for(self, user_id: str) -> ApiKeyList:
        rows = self.session.scalars(select(ApiKey).where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
                                    .order_by(ApiKey.created_at.desc(), ApiKey.id))
        return ApiKeyList(data=[ApiKeyRead.model_validate(r) for r in rows])

    def revoke(self, user_id: str, key_id: str) -> None:
        row = self.session.get(ApiKey, key_id)
        if row is None or row.user_id != user_id or row.revoked_at is not None:
            raise NotFound(f"No API key {key_id!r}", code="api_key_not_found", param="key_id")
        row.revoked_at = utcnow()
        self.session.commit()

    def authenticate(self, secret: str, method: str, route_path: str) -> ApiKey:
        """The key a request presents, checked for revocation, expiry and scope (401/403)."""
        computed = digest(self.key, secret)
        row = self.session.scalar(select(ApiKey).where(ApiKey.secret_hash == computed))
        if row is None or not hmac.compare_digest(row.secret_hash, computed):
            raise Unauthorized("Invalid API key", code="invalid_api_key")
        now = utcnow()
        if row.revoked_at is not None:
            raise Unauthorized("This API key has been revoked", code="api_key_revoked")
        if row.expires_at is not None and row.expires_at <= now:
            raise Unauthorized("This API key has expired", code="api_key_expired")
        if row.scope != "full" and not allowed_for_inference(method, route_path):
            raise AppError(f"This API key's scope is {row.scope!r}; {method} {route_path} needs a key of scope "
                           "'full' (or log in)", code="insufficient_scope", status_code=403)
        if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
            self.session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
        self.session.commit()
        return row


def allowed_for_inference(method: str, route_path: str) -> bool:
    return route_path.startswith("/v1/") or (method, route_path) in INFERENCE_ROUTES


async def user_row_for_key(request: Any, secret: str) -> dict[str, Any] | None:
    """For app/deps.py: the users row of the key's owner; the key is kept on `request.state.api_key`."""
    state = request.app.state
    route = request.scope.get("route")
    path = getattr(route, "path", None) or request.url.path

    def check() -> dict[str, Any]:  # a query and a commit: in the threadpool, never on the event loop
        with state.sessionmaker() as session:
            row = ApiKeyService(session, state.settings).authenticate(secret, request.method, path)
            return {"id": row.id, "scope": row.scope, "user_id": row.user_id}

    request.state.api_key = await run_in_threadpool(check)
    return await user_row(state.sessionmaker, request.state.api_key["user_id"])
