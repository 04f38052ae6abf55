"""The model registry: named, versioned, tagged models, each
pointing at a Completed training job's weights. Also resolves what evaluation and deployment
accept as a model: a job name, a model_id, or a model name (its latest version)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, cast, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import idempotency
from app.auth.models import User
from app.errors import Conflict, NotFound
from app.pagination import paginate
from app.registry.models import RegisteredModel
from app.registry.schemas import ModelCreate, ModelRead
from app.statuses import JobStatus
from app.training.models import TrainingJob

ROUTE = "POST /api/models"


def owned_job(session: Session, user: User, job_name: str, param: str = "job_name") -> TrainingJob:
    job = session.scalar(select(TrainingJob).where(TrainingJob.user_id == user.id, TrainingJob.job_name == job_name))
    if job is None:
        raise NotFound(f"No training job {job_name!r}", param=param, code="job_not_found")
    return job


def require_completed(job: TrainingJob, param: str = "job_name") -> TrainingJob:
    if job.status != JobStatus.COMPLETED or not job.model_artifacts_uri:
        raise Conflict(f"Training job {job.job_name!r} is {job.status}; only a Completed job has a model",
                       param=param, code="job_not_completed")
    return job


def resolve_model(session: Session, user: User, ref: str, param: str = "model") -> tuple[TrainingJob,
                                                                                         RegisteredModel | None]:
    """A model reference -> (its training job, the registered model or None).

    `ref` is a registered model_id, a job name, or a registered model name (latest version), in
    that order. Another user's anything is 404, like a missing one. The job is not checked for
    completion: callers that need weights use `require_completed`.
    """
    registered = session.get(RegisteredModel, ref)
    if registered is None or registered.user_id != user.id:
        registered = None
        job = session.scalar(select(TrainingJob).where(TrainingJob.job_name == ref, TrainingJob.user_id == user.id))
        if job is not None:
            return job, None
        registered = session.scalar(
            select(RegisteredModel).where(RegisteredModel.user_id == user.id, RegisteredModel.model_name == ref)
            .order_by(RegisteredModel.version.desc()).limit(1))
    if registered is None:
        raise NotFound(f"No model {ref!r}: give a job name, a model_id or a registered model name", param=param,
                       code="model_not_found")
    job = session.get(TrainingJob, registered.job_id) if registered.job_id else None
    if job is None:
        job = session.scalar(select(TrainingJob).where(TrainingJob.job_name == registered.job_name,
                                                       TrainingJob.user_id == user.id))
    if job is None:
        raise Conflict(f"Model {ref!r}: its training job {registered.job_name!r} was deleted", param=param,
                       code="model_job_deleted")
    return job, registered


class RegistryService:
    def __init__(self, session: Session, user: User) -> None:
        self.session, self.user = session, user

    def create(self, req: ModelCreate, idem_key: str | None) -> tuple[int, dict[str, Any]]:
        body_hash = idempotency.body_hash(req.model_dump(mode="json"))
        if idem_key:
            prior = idempotency.lookup(self.session, self.user.id, ROUTE, idem_key, body_hash)
            if prior is not None:
                return prior.status_code, prior.response
        job = require_completed(owned_job(self.session, self.user, req.job_name))
        for attempt in range(3):  # two saves of one name at once: the loser takes the next version
            model = RegisteredModel(
                user_id=self.user.id, model_name=req.model_name, version=self._next_version(req.model_name),
                description=req.description, tags=req.tags, job_id=job.id, job_name=job.job_name,
                base_model=job.base_model, model_uri=job.model_artifacts_uri or "",
            )
            self.session.add(model)
            try:
                self.session.flush()
                break
            except IntegrityError:
                self.session.rollback()
                if attempt == 2:
                    raise Conflict(f"Could not save {req.model_name!r}: another save of the same name is in "
                                   "progress; try again", param="model_name", code="model_version_conflict") from None
        body = ModelRead.of(model).model_dump(mode="json")
        if idem_key:
            idempotency.remember(self.session, self.user.id, ROUTE, idem_key, body_hash, 201, body)
        self.session.commit()
        return 201, body

    def _next_version(self, model_name: str) -> int:
        latest = self.session.scalar(select(func.max(RegisteredModel.version)).where(
            RegisteredModel.user_id == self.user.id, RegisteredModel.model_name == model_name))
        return int(latest or 0) + 1

    def list(self, limit: int, after: str | None, tag: str | None,
             model_name: str | None) -> tuple[list[RegisteredModel], bool, str | None]:
        q = select(RegisteredModel).where(RegisteredModel.user_id == self.user.id)
        if model_name:
            q = q.where(RegisteredModel.model_name == model_name)
        if tag:
            # Tags are stored as a JSON list of plain strings (no quotes allowed in a tag), so the
            # quoted tag matches exactly one whole element on SQLite and PostgreSQL alike.
            q = q.where(cast(RegisteredModel.tags, String).contains(f'"{tag.strip()}"', autoescape=True))
        return paginate(self.session, q, RegisteredModel, limit, after)

    def get(self, model_id: str) -> RegisteredModel:
        model = self.session.get(RegisteredModel, model_id)
        if model is None or model.user_id != self.user.id:
            raise NotFound(f"No model {model_id!r}", param="model_id", code="model_not_found")
        return model

    def delete(self, model_id: str) -> None:
        """Unregister a version; the training job's weights stay (they belong to the job)."""
        self.session.delete(self.get(model_id))
        self.session.commit()
