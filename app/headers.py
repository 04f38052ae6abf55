"""Security headers on every response, and no caching of the responses that carry credentials."""

from __future__ import annotations

from typing import Any

ALWAYS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY")]
NO_STORE = (b"cache-control", b"no-store")
# Responses that carry tokens, secrets or account data: never kept by a browser or proxy cache.
CREDENTIAL_PATHS = ("/api/auth/", "/api/api-keys")


class SecurityHeadersMiddleware:
    """A plain ASGI wrapper (no per-request objects beyond one closure: cheap on the hot routes)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = [*ALWAYS, NO_STORE] if scope["path"].startswith(CREDENTIAL_PATHS) else ALWAYS

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
