"""client.evaluations (tuned model against its base), client.models (the registry), client.api_keys."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from llmtuner._core import Op, Request, Resource, Sleep, async_op, ident, new_idempotency_key, seg, sync_op
from llmtuner.errors import EvaluationFailedError, WaitTimeoutError
from llmtuner.types import ApiKey, ApiKeyCreated, Evaluation, GenerationConfig, RegisteredModel


class _EvaluationOps(Resource):
    def _create(self, model: Any, *, dataset: Any = None, metrics: list[str] | None = None,
                compare_with_base: bool | None = None, max_examples: int | None = None,
                generation: GenerationConfig | dict[str, Any] | None = None,
                include_general_probe: bool | None = None, instance_type: str | None = None,
                idempotency_key: str | None = None) -> Op[Evaluation]:
        """Evaluate a job (or registered model id) on its validation split or a `dataset`, against the base
        model by default. Runs in the background: `wait()` for the results."""
        if isinstance(generation, GenerationConfig):
            generation = generation.model_dump(exclude_unset=True)
        body = {"model": ident(model, "job_name"), "dataset_id": None if dataset is None else ident(dataset, "id"),
                "metrics": metrics, "compare_with_base": compare_with_base, "max_examples": max_examples,
                "generation": generation, "include_general_probe": include_general_probe,
                "instance_type": instance_type}
        out = yield Request("POST", "/api/evaluations", json={k: v for k, v in body.items() if v is not None},
                            idempotency_key=idempotency_key or new_idempotency_key())
        return Evaluation.model_validate(out)

    def _get(self, evaluation_id: str) -> Op[Evaluation]:
        return Evaluation.model_validate((yield Request("GET", f"/api/evaluations/{seg(evaluation_id)}")))

    def _wait(self, evaluation: Any, *, poll_interval: float = 2.0, timeout: float | None = None,
              on_progress: Callable[[Evaluation], None] | None = None) -> Op[Evaluation]:
        """Poll until the evaluation ends; EvaluationFailedError when it failed."""
        eid, deadline = ident(evaluation, "id"), None if timeout is None else time.monotonic() + timeout
        while True:
            ev = yield from self._get(eid)
            if on_progress is not None:
                on_progress(ev)
            if ev.status == "Completed":
                return ev
            if ev.status == "Failed":
                raise EvaluationFailedError(ev)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(f"Evaluation {eid} is still {ev.status} after {timeout} s")
            yield Sleep(poll_interval)


class Evaluations(_EvaluationOps):
    create = sync_op(_EvaluationOps._create)
    get = sync_op(_EvaluationOps._get)
    wait = sync_op(_EvaluationOps._wait)

    def list(self, *, status: str | None = None, model: str | None = None,
             limit: int | None = None) -> Iterator[Evaluation]:
        return self._client._paginate(  # type: ignore[no-any-return]
            "/api/evaluations", {"status": status, "model": model}, Evaluation, limit)


class AsyncEvaluations(_EvaluationOps):
    create = async_op(_EvaluationOps._create)
    get = async_op(_EvaluationOps._get)
    wait = async_op(_EvaluationOps._wait)

    def list(self, *, status: str | None = None, model: str | None = None,
             limit: int | None = None) -> AsyncIterator[Evaluation]:
        return self._client._paginate(  # type: ignore[no-any-return]
            "/api/evaluations", {"status": status, "model": model}, Evaluation, limit)


class _ModelOps(Resource):
    def _create(self, job: Any, model_name: str, *, description: str = "", tags: list[str] | None = None,
                idempotency_key: str | None = None) -> Op[RegisteredModel]:
        """Register a completed job's model under a name (each registration of a name is a new version)."""
        body = {"job_name": ident(job, "job_name"), "model_name": model_name, "description": description,
                "tags": tags or []}
        out = yield Request("POST", "/api/models", json=body, idempotency_key=idempotency_key or new_idempotency_key())
        return RegisteredModel.model_validate(out)

    def _get(self, model_id: str) -> Op[RegisteredModel]:
        return RegisteredModel.model_validate((yield Request("GET", f"/api/models/{seg(model_id)}")))

    def _delete(self, model_id: str) -> Op[None]:
        yield Request("DELETE", f"/api/models/{seg(model_id)}")


class Models(_ModelOps):
    create = sync_op(_ModelOps._create)
    get = sync_op(_ModelOps._get)
    delete = sync_op(_ModelOps._delete)

    def list(self, *, tag: str | None = None, model_name: str | None = None,
             limit: int | None = None) -> Iterator[RegisteredModel]:
        return self._client._paginate(  # type: ignore[no-any-return]
            "/api/models", {"tag": tag, "model_name": model_name}, RegisteredModel, limit)


class AsyncModels(_ModelOps):
    create = async_op(_ModelOps._create)
    get = async_op(_ModelOps._get)
    delete = async_op(_ModelOps._delete)

    def list(self, *, tag: str | None = None, model_name: str | None = None,
             limit: int | None = None) -> AsyncIterator[RegisteredModel]:
        return self._client._paginate(  # type: ignore[no-any-return]
            "/api/models", {"tag": tag, "model_name": model_name}, RegisteredModel, limit)


class _ApiKeyOps(Resource):
    def _create(self, name: str, *, scope: str = "inference", expires_in_days: int | None = None) -> Op[ApiKeyCreated]:
        """Create an API key; `.key` is the secret, returned this once only. `scope`: inference | full."""
        body = {"name": name, "scope": scope, "expires_in_days": expires_in_days}
        out = yield Request("POST", "/api/api-keys", json={k: v for k, v in body.items() if v is not None})
        return ApiKeyCreated.model_validate(out)

    def _list(self) -> Op[list[ApiKey]]:
        return [ApiKey.model_validate(k) for k in (yield Request("GET", "/api/api-keys"))["data"]]

    def _delete(self, key_id: str) -> Op[None]:
        """Revoke a key."""
        yield Request("DELETE", f"/api/api-keys/{seg(key_id)}")


class ApiKeys(_ApiKeyOps):
    create = sync_op(_ApiKeyOps._create)
    list = sync_op(_ApiKeyOps._list)
    delete = sync_op(_ApiKeyOps._delete)


class AsyncApiKeys(_ApiKeyOps):
    create = async_op(_ApiKeyOps._create)
    list = async_op(_ApiKeyOps._list)
    delete = async_op(_ApiKeyOps._delete)
