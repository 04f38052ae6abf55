"""Typed exceptions. Every API error carries the body's `code`, `message`, `param` and `details`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from llmtuner.types import Evaluation, TrainingJob


class LLMTunerError(Exception):
    """The base of every error this package raises."""


class APIConnectionError(LLMTunerError):
    """The server could not be reached (after the retries allowed)."""


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class APIError(LLMTunerError):
    """The API answered with an error body `{"error": {"code", "message", "param", "details"}}`."""

    def __init__(self, status_code: int, code: str, message: str, param: str | None = None,
                 details: list[Any] | None = None, response: httpx.Response | None = None) -> None:
        super().__init__(f"{message} ({code}, HTTP {status_code})")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.param = param
        self.details = details
        self.response = response


class BadRequestError(APIError):
    """400: a malformed request."""


class AuthenticationError(APIError):
    """401: no, a wrong or an expired token, API key or password."""


class PermissionDeniedError(APIError):
    """403: the credentials may not do this (e.g. an inference-only API key)."""


class NotFoundError(APIError):
    """404: missing, or not yours."""


class ConflictError(APIError):
    """409: a name is taken, or the resource is in the wrong state for the action."""


class PayloadTooLargeError(APIError):
    """413: the upload exceeds the server's limit."""


class UnsupportedMediaTypeError(APIError):
    """415: the file type is not one the server reads."""


class ValidationError(APIError):
    """422: a field is invalid; `param` names it (e.g. `hyperparameters.learning_rate`)."""


UnprocessableEntityError = ValidationError


class RateLimitError(APIError):
    """429: too many requests, or the monthly budget is spent (`code == "budget_exceeded"`)."""


class InternalServerError(APIError):
    """5xx: the server, its compute backend or its storage failed."""


class ServiceUnavailableError(InternalServerError):
    """503: a part of the service is down or busy; retried for idempotent calls."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
    409: ConflictError, 413: PayloadTooLargeError, 415: UnsupportedMediaTypeError, 422: ValidationError,
    429: RateLimitError, 503: ServiceUnavailableError,
}


def error_from_response(resp: httpx.Response) -> APIError:
    """The typed exception for an error response (any body shape: a proxy's HTML page included)."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        code, message = str(err.get("code") or "error"), str(err.get("message") or resp.reason_phrase)
        param, details = err.get("param"), err.get("details")
    else:
        code, message, param, details = "http_error", resp.text[:500] or resp.reason_phrase, None, None
    cls = _BY_STATUS.get(resp.status_code) or (InternalServerError if resp.status_code >= 500 else APIError)
    return cls(resp.status_code, code, message, param, details, resp)


class JobFailedError(LLMTunerError):
    """`jobs.wait()` saw the job end as Failed; `job.error` says why."""

    def __init__(self, job: TrainingJob) -> None:
        err = job.error
        super().__init__(f"Job {job.job_name} failed: {err.message if err else 'no reason given'}"
                         + (f" ({err.code})" if err else ""))
        self.job = job
        self.code = err.code if err else None
        self.message = err.message if err else None


class EvaluationFailedError(LLMTunerError):
    """`evaluations.wait()` saw the evaluation end as Failed."""

    def __init__(self, evaluation: Evaluation) -> None:
        err = evaluation.error
        super().__init__(f"Evaluation {evaluation.id} failed: {err.message if err else 'no reason given'}")
        self.evaluation = evaluation
        self.code = err.code if err else None


class EndpointFailedError(LLMTunerError):
    """`endpoints.wait()` saw the endpoint end as Failed."""

    def __init__(self, name: str, reason: str | None) -> None:
        super().__init__(f"Endpoint {name} failed: {reason or 'no reason given'}")
        self.endpoint_name = name
        self.failure_reason = reason


class WaitTimeoutError(LLMTunerError, TimeoutError):
    """A `wait()` ran past its `timeout` (the job or endpoint goes on)."""
