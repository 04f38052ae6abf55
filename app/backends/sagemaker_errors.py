"""AWS failures as the API's errors, shared by the SageMaker training and endpoint backends."""

from __future__ import annotations

import json
import re
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from app.errors import AppError, BackendError, ServiceUnavailable, ValidationFailed

THROTTLING_CODES = frozenset({
    "ThrottlingException", "Throttling", "ThrottledException", "TooManyRequestsException",
    "RequestLimitExceeded", "RequestThrottled", "RequestThrottledException", "SlowDown",
    "ProvisionedThroughputExceededException",
})

def aws_details(exc: ClientError) -> list[dict[str, Any]]:
    err = exc.response.get("Error", {})
    meta = exc.response.get("ResponseMetadata", {})
    return [{
        "aws_code": err.get("Code"), "aws_message": err.get("Message"), "aws_operation": exc.operation_name,
        "aws_request_id": meta.get("RequestId"), "retry_attempts": meta.get("RetryAttempts"),
    }]


def map_aws_error(exc: BaseException, action: str) -> AppError:
    """One AWS failure as the API's error.

    ResourceLimitExceeded -> 429 capacity_unavailable (the quota named); ValidationException -> 422
    backend_validation_error; throttling that outlived botocore's retries -> 503 backend_throttled;
    anything else -> 502 backend_error (or backend_unreachable when AWS could not be reached).
    AWS's own code and message are always in `details`.
    """
    if isinstance(exc, AppError):
        return exc
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or "Unknown")
        message = str(err.get("Message") or "").strip()
        details = aws_details(exc)
        if code == "ResourceLimitExceeded":
            m = re.search(r"limit '([^']+)'", message)
            what = f"the AWS quota '{m.group(1)}' is used up" if m else f"AWS says: {message}"
            return AppError(
                f"SageMaker has no capacity for this request: {what}. Request an increase in AWS Service "
                "Quotas (Amazon SageMaker), wait for running jobs or endpoints to end, or choose another "
                "instance type.",
                status_code=429, code="capacity_unavailable", details=details,
            )
        if code in THROTTLING_CODES:
            return ServiceUnavailable(
                f"SageMaker is throttling requests ({action}) and the retries ran out; try again shortly",
                code="backend_throttled", details=details, headers={"Retry-After": "30"},
            )
        if code in ("ValidationException", "ValidationError"):
            return ValidationFailed(f"SageMaker rejected the request ({action}): {message}",
                                    code="backend_validation_error", details=details)
        return BackendError(f"SageMaker {action} failed: {code}: {message}", details=details)
    if isinstance(exc, BotoCoreError):
        return BackendError(f"AWS could not be reached ({action}): {exc}", code="backend_unreachable",
                            details=[{"error": type(exc).__name__, "message": str(exc)}])
    return BackendError(f"SageMaker {action} failed: {exc}", details=[{"error": type(exc).__name__}])


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "")


def error_message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message") or "")


def not_found(exc: ClientError) -> bool:
    msg = error_message(exc).lower()
    return error_code(exc) in ("ResourceNotFound", "ResourceNotFoundException", "NoSuchEntity") or (
        error_code(exc) in ("ValidationException", "ValidationError")
        and ("could not find" in msg or "does not exist" in msg or "not found" in msg)
    )


def already_exists(exc: ClientError) -> bool:
    msg = error_message(exc).lower()
    return error_code(exc) in ("ResourceInUse", "ResourceInUseException") or (
        error_code(exc) in ("ValidationException", "ValidationError") and ("already exist" in msg or "unique" in msg)
    )


def scrubbed(err: AppError, secret: str | None) -> AppError:
    """`err` without `secret` in its message or details: AWS's validation messages can quote the
    request's values, and a request may carry the Hugging Face token in its environment."""
    if not secret:
        return err
    err.message = err.message.replace(secret, "***")
    err.args = (err.message,)
    if err.details:
        err.details = json.loads(json.dumps(err.details, default=str).replace(json.dumps(secret)[1:-1], "***"))
    return err
