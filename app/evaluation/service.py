"""Evaluations: a tuned model against its base on held-out
data, run in the background as a training-style job of `training_scripts/evaluate.py` on the compute
backend (a local subprocess, or a SageMaker training job with the same script)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import catalog, events, idempotency
from app.auth.models import User
from app.config import Settings
from app.datasets.service import ready_dataset
from app.errors import Conflict, NotFound, ValidationFailed
from app.evaluation.models import Evaluation
from app.evaluation.schemas import ALL_METRICS, EvaluationCreate, EvaluationRead
from app.pagination import paginate
from app.registry.service import require_completed, resolve_model
from app.statuses import EvaluationStatus
from app.storage import ObjectStore, check_key, model_key
from app.training.models import TrainingJob
from app.usage.service import check_budget

RESOURCE = "evaluation"
ROUTE = "POST /api/evaluations"
# Rough wall time of one example on one model (forward pass + generation), for the budget check only.
SECONDS_PER_EXAMPLE = 2.0


def evaluation_key(user_id: str, evaluation_id: str, name: str) -> str:
    return check_key(f"users/{user_id}/evaluations/{evaluation_id}/{name}")


def tuned_model_key(store: ObjectStore, job: TrainingJob) -> str:
    """Where the job's model.tar.gz lies in the store."""
    key = store.key_from_uri(job.model_artifacts_uri) if job.model_artifacts_uri else None
    return key if key else model_key(job.user_id, job.job_name, "output/model.tar.gz")


def base_source(settings: Settings, base_model: str) -> str:
    """The base model's weights (local dir, hub id or s3:// prefix); a catalogue id when still listed."""
    try:
        return catalog.resolve_source(settings, catalog.base_model(settings, base_model))
    except ValidationFailed:
        return base_model


def cost_of(ev: Evaluation) -> float:
    seconds = int((ev.backend_handle or {}).get("billable_seconds") or 0)
    return round(seconds / 3600 * float(ev.request.get("price_per_hour") or 0.0), 4)


def evaluation_read(ev: Evaluation) -> EvaluationRead:
    req, state = ev.request or {}, ev.backend_handle or {}
    return EvaluationRead.model_validate({
        "id": ev.id, "status": ev.status, "model": ev.model_ref, "job_name": req.get("job_name", ""),
        "registered_model_id": ev.registered_model_id, "base_model": req.get("base_model", ""),
        "dataset_id": ev.dataset_id, "dataset": req.get("dataset", "validation_split"),
        "metrics": req.get("metrics", ALL_METRICS), "compare_with_base": req.get("compare_with_base", True),
        "max_examples": req.get("max_examples", 50), "generation": req.get("generation", {}),
        "include_general_probe": req.get("include_general_probe", True),
        "instance_type": req.get("instance_type", ""), "backend": req.get("backend", ""),
        "progress": state.get("progress"), "results": ev.results or None,
        "error": {"code": ev.error_code, "message": ev.error_message or ""} if ev.error_code else None,
        "billable_seconds": int(state.get("billable_seconds") or 0), "cost": cost_of(ev),
        "created_at": ev.created_at, "started_at": ev.started_at, "ended_at": ev.ended_at,
    })


class EvaluationService:
    def __init__(self, session: Session, settings: Settings, store: ObjectStore, backend_name: str, user: User) -> None:
        self.session, self.settings, self.store, self.user = session, settings, store, user
        self.backend_name = backend_name

    def create(self, req: EvaluationCreate, idem_key: str | None) -> tuple[int, dict[str, Any]]:
        body_hash = idempotency.body_hash(req.model_dump(mode="json"))
        if idem_key:
            prior = idempotency.lookup(self.session, self.user.id, ROUTE, idem_key, body_hash)
            if prior is not None:
                return prior.status_code, prior.response
        job, registered = resolve_model(self.session, self.user, req.model)
        require_completed(job, param="model")
        tuned_key = tuned_model_key(self.store, job)
        if not self.store.exists(tuned_key):
            raise Conflict(f"The weights of {job.job_name!r} are no longer in storage", param="model",
                           code="model_artifacts_missing")
        data_key, dataset = self._data(job, req.dataset_id)
        inst = catalog.instance_type(self.settings, req.instance_type or job.instance_type, "training")
        price = float(inst["training"])
        models = 1 + req.compare_with_base
        estimate = (float(inst.get("startup_seconds") or 0) + models * req.max_examples * SECONDS_PER_EXAMPLE) \
            / 3600 * price
        check_budget(self.session, self.user, round(estimate, 4))
        ev = Evaluation(
            user_id=self.user.id, status=EvaluationStatus.PENDING, model_ref=req.model, job_id=job.id,
            registered_model_id=registered.id if registered else None, dataset_id=req.dataset_id,
            request={
                "metrics": list(dict.fromkeys(req.metrics or ALL_METRICS)),
                "compare_with_base": req.compare_with_base, "max_examples": req.max_examples,
                "generation": req.generation.model_dump(), "include_general_probe": req.include_general_probe,
                "instance_type": inst["name"], "price_per_hour": price, "backend": self.backend_name,
                "job_name": job.job_name, "base_model": job.base_model, "model_key": tuned_key,
                "data_key": data_key, "dataset": dataset, "estimated_cost": round(estimate, 4),
            },
        )
        self.session.add(ev)
        self.session.flush()
        events.record(self.session, user_id=self.user.id, resource_type=RESOURCE, resource_id=ev.id,
                      type="created", message=f"Evaluation of {job.job_name} queued on the {self.backend_name} "
                      f"backend ({inst['name']})", data={"model": req.model, "dataset": dataset})
        body = evaluation_read(ev).model_dump(mode="json")
        if idem_key:
            idempotency.remember(self.session, self.user.id, ROUTE, idem_key, body_hash, 202, body)
        self.session.commit()
        return 202, body

    def _data(self, job: TrainingJob, dataset_id: str | None) -> tuple[str, str]:
        """The canonical JSONL to evaluate on: a dataset of the caller's, or the job's validation split."""
        if dataset_id:
            ds = ready_dataset(self.session, self.user.id, dataset_id)
            assert ds.canonical_key
            return ds.canonical_key, "dataset"
        key = (job.data or {}).get("validation_key")
        if not key:
            raise Conflict(f"Training job {job.job_name!r} has no validation split (validation_split was 0); "
                           "pass a dataset_id to evaluate on", param="dataset_id", code="no_validation_data")
        if not self.store.exists(key):
            raise Conflict(f"The validation split of {job.job_name!r} is no longer in storage; pass a dataset_id",
                           param="dataset_id", code="validation_data_missing")
        return str(key), "validation_split"

    def get(self, evaluation_id: str) -> Evaluation:
        ev = self.session.get(Evaluation, evaluation_id)
        if ev is None or ev.user_id != self.user.id:
            raise NotFound(f"No evaluation {evaluation_id!r}", param="evaluation_id", code="evaluation_not_found")
        return ev

    def list(self, limit: int, after: str | None, status: str | None,
             model: str | None) -> tuple[list[Evaluation], bool, str | None]:
        q = select(Evaluation).where(Evaluation.user_id == self.user.id)
        if status:
            q = q.where(Evaluation.status == status)
        if model:
            q = q.where(Evaluation.model_ref == model)
        return paginate(self.session, q, Evaluation, limit, after)
