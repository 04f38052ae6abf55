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


# OpenAPI: every error is `{"error": {...}}`; FastAPI's own document would name a `{detail}` shape
# for 422 and no other error status at all.
ERROR_SCHEMA = {
    "title": "Error", "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["code", "message", "param", "details"],
        "properties": {
            "code": {"type": "string", "description": "stable machine-readable code, e.g. job_not_found"},
            "message": {"type": "string"},
            "param": {"anyOf": [{"type": "string"}, {"type": "null"}],
                      "description": "the field, query parameter or header at fault"},
            "details": {"anyOf": [{"type": "array", "items": {}}, {"type": "null"}]},
        },
    }},
}
ERROR_STATUSES = {
    "400": "Bad request (invalid JSON, cursor or parameter)", "401": "Missing, invalid or expired token",
    "403": "Not allowed with this credential", "404": "Not found (also another user's resource)",
    "409": "Conflict with the resource's state", "413": "Request body over the limit",
    "415": "Unsupported file type", "422": "Validation error (`param` names the field)",
    "429": "Rate, quota or budget limit (see Retry-After where given)", "500": "Internal error (quote its id)",
    "502": "The compute backend or storage failed", "503": "Not ready or unavailable",
    "504": "The backend did not answer in time",
}
# /v1 answers in OpenAI's error shape (app/openai/errors.py), so that OpenAI's clients raise the matching
# exception; a 413 (the body limit, before the route) and a 500 (the last-resort handler) keep the API's.
OPENAI_ERROR_SCHEMA = {
    "title": "OpenAIError", "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "properties": {
            "message": {"type": "string"},
            "type": {"type": "string", "description": "e.g. invalid_request_error, authentication_error"},
            "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "code": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
    }},
}
OPENAI_PREFIX = "/v1/"
_API_SHAPED_ON_OPENAI = ("413", "500")
# The statuses a route can answer besides its success, by method (any route: 400, 404, 422, 500).
# A route declares any other one in its `responses=` ({409: {"description": ...}}); it gets the error
# schema here.
_BY_METHOD = {"get": ("401", "403"), "delete": ("401", "403", "409"),
              "post": ("401", "403", "409", "413", "415", "429", "502", "503", "504"),
              "put": ("401", "403", "409", "413", "429"), "patch": ("401", "403", "409", "413", "429")}


def _declares_body(response: dict[str, Any]) -> bool:
    """Whether a route's own `responses=` entry names a schema (FastAPI writes `{}` for none)."""
    return any(media.get("schema") for media in response.get("content", {}).values())


def document_errors(spec: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with the real error shape and the error statuses each operation returns."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Error"] = ERROR_SCHEMA
    api_ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    openai_ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}}}
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            responses = op.setdefault("responses", {})
            codes = {"400", "404", "422", "500", *_BY_METHOD[method]}
            if not op.get("security") and path != "/api/auth/token":  # public: no token to refuse
                codes -= {"401", "403"}
            if path == "/api/health":
                codes.add("503")
            openai = path.startswith(OPENAI_PREFIX)
            if openai:
                schemas["OpenAIError"] = OPENAI_ERROR_SCHEMA
            declared = {c: r.get("description") for c, r in responses.items()
                        if c.isdigit() and int(c) >= 400 and not _declares_body(r)}
            for code in sorted(codes | set(declared)):
                ref = openai_ref if openai and code not in _API_SHAPED_ON_OPENAI else api_ref
                description = declared.get(code) or ERROR_STATUSES.get(code, "Error")
                responses[code] = {"description": description, **ref}
    return spec


def install_openapi_errors(app: Any) -> None:
    """`app.openapi()` (and /openapi.json) built once, with `document_errors` applied."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(build())
        return app.openapi_schema  # type: ignore[no-any-return]

    app.openapi = openapi
