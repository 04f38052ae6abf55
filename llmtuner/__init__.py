"""LLM Tuner's Python SDK: `Client` / `AsyncClient` over the REST API, typed results and errors.

    from llmtuner import Client, TrainingConfig
    client = Client()   # LLMTUNER_BASE_URL, LLMTUNER_API_KEY
    ds = client.datasets.upload("qa.jsonl")
    job = client.jobs.create(dataset=ds, base_model="llmtuner/tiny-llama",
                             hyperparameters=TrainingConfig(epochs=3))
    job = client.jobs.wait(job, on_progress=lambda j: print(j.progress.percent))
    folder = client.jobs.download(job, "./model")
"""

__version__ = "0.1.0"

from llmtuner.client import AsyncClient, Client  # noqa: E402
from llmtuner.errors import (  # noqa: E402
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    EndpointFailedError,
    EvaluationFailedError,
    InternalServerError,
    JobFailedError,
    LLMTunerError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableEntityError,
    UnsupportedMediaTypeError,
    ValidationError,
    WaitTimeoutError,
)
from llmtuner.types import GenerationConfig, GenerationParameters, TrainingConfig  # noqa: E402

__all__ = [
    "AsyncClient", "Client", "TrainingConfig", "GenerationConfig", "GenerationParameters",
    "LLMTunerError", "APIError", "APIConnectionError", "APITimeoutError", "AuthenticationError",
    "BadRequestError", "ConflictError", "EndpointFailedError", "EvaluationFailedError", "InternalServerError",
    "JobFailedError", "NotFoundError", "PayloadTooLargeError", "PermissionDeniedError", "RateLimitError",
    "ServiceUnavailableError", "UnprocessableEntityError", "UnsupportedMediaTypeError", "ValidationError",
    "WaitTimeoutError",
]
