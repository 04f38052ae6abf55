"""OpenAI's error body on /v1, so that OpenAI clients raise the matching exception:
{"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from app.errors import AppError

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "invalid_request_error", 409: "invalid_request_error", 422: "invalid_request_error",
         429: "rate_limit_error"}


def body(status: int, message: str, code: str | None, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": TYPES.get(status, "api_error"), "param": param, "code": code}}


def response(e: AppError) -> JSONResponse:
    # OpenAI answers invalid parameters with 400; the rest of the API's 422s mean the same here
    status = 400 if e.status_code == 422 else e.status_code
    return JSONResponse(body(status, e.message, e.code, e.param), status_code=status, headers=e.headers)


def validation_error(errors: list[Any]) -> AppError:
    """The first problem of a pydantic validation, naming its field."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    param = ".".join(loc) or None
    if first.get("type") == "extra_forbidden":
        return AppError(f"Unsupported parameter: {param!r} is not supported by this API (see docs/openai.md)",
                        code="unsupported_parameter", param=param)
    msg = str(first.get("msg") or "Invalid request")
    return AppError(f"{param}: {msg}" if param else msg, code="invalid_value", param=param)


class OpenAIRoute(APIRoute):
    """A route whose errors, authentication's included, come out in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except AppError as e:
                return response(e)
            except RequestValidationError as e:
                return response(validation_error(list(e.errors())))

        return route
