"""Request body limits, enforced while the body streams in (413 as soon as one is crossed)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import PayloadTooLarge

# Multipart framing around the file adds a little to the body.
MULTIPART_SLACK = 64 * 1024


class BodyLimitMiddleware:
    def __init__(self, app: Any, default_limit: int, upload_limit: int, upload_paths: tuple[str, ...]) -> None:
        self.app = app
        self.default_limit = default_limit
        self.upload_limit = upload_limit
        self.upload_paths = upload_paths

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        upload = scope["path"] in self.upload_paths
        limit = self.upload_limit + MULTIPART_SLACK if upload else self.default_limit
        what = "upload" if upload else "request body"
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _reject(send, what, limit)
            return
        seen = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge(what, limit)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await _reject(send, what, limit)


class _TooLarge(StarletteHTTPException):
    """An HTTPException, so that a route's body parsing re-raises it as it is (FastAPI turns any other
    exception met while parsing a body into a 400) and the API's handler answers 413."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(413, f"The {what} is larger than the limit of {limit} bytes")


async def _reject(send: Any, what: str, limit: int) -> None:
    err = PayloadTooLarge(f"The {what} is larger than the limit of {limit} bytes", param="file"
                          if what == "upload" else None)
    body = orjson.dumps(err.body())
    try:
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    except RuntimeError:  # the response had already started
        pass
