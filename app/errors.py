"""One error hierarchy, rendered as the API's error shape."""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        details: list[Any] | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status_code:
            self.status_code = status_code
        self.param = param
        self.details = details
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "param": self.param, "details": self.details}}


class BadRequest(AppError):
    status_code, code = 400, "bad_request"


class Unauthorized(AppError):
    status_code, code = 401, "unauthorized"

    def __init__(self, message: str = "Missing, invalid or expired token", **kw: Any) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(message, **kw)


class NotFound(AppError):
    status_code, code = 404, "not_found"


class Conflict(AppError):
    status_code, code = 409, "conflict"


class PayloadTooLarge(AppError):
    status_code, code = 413, "payload_too_large"


class UnsupportedMediaType(AppError):
    status_code, code = 415, "unsupported_file_type"


class ValidationFailed(AppError):
    status_code, code = 422, "validation_error"


class RateLimited(AppError):
    status_code, code = 429, "rate_limited"


class BackendError(AppError):
    """The compute backend or storage failed; the backend's own message is kept in details."""

    status_code, code = 502, "backend_error"


class ServiceUnavailable(AppError):
    status_code, code = 503, "service_unavailable"


class GatewayTimeout(AppError):
    status_code, code = 504, "timeout"
