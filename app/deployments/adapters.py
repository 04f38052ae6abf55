"""Many LoRA adapters on one base-model endpoint: deploy-time adapters, attach and detach on a
running endpoint (no restart).

A base-model endpoint records `model_uri = "base-model:{catalogue id}"`; its server loads the base
once and the adapters on demand (training_scripts/adapters.py). An adapter must have been trained on
that same base (422 naming it otherwise). Attaching to an endpoint whose server runs tells the
server at once; one whose server has not started yet gets the adapter with its start.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from app import catalog, events
from app.auth.models import User
from app.db import utcnow
from app.deployments.models import Endpoint, EndpointAdapter, InferenceRecord
from app.deployments.schemas import AdapterRead, AdapterRef, AdapterUsage
from app.errors import Conflict, NotFound, ValidationFailed
from app.registry.models import RegisteredModel
from app.statuses import EndpointStatus, JobStatus
from app.storage import user_prefix
from app.training.models import TrainingJob

BASE_URI_PREFIX = "base-model:"
RESOURCE = "endpoint"
DEPLOYED = "deployed_at"  # the reconciler's handle key: the server was started
MAX_ADAPTERS = 100


def is_base_endpoint(ep: Endpoint) -> bool:
    return ep.model_uri.startswith(BASE_URI_PREFIX)


def attached(session: Session, endpoint_ids: list[str]) -> dict[str, list[EndpointAdapter]]:
    out: dict[str, list[EndpointAdapter]] = {i: [] for i in endpoint_ids}
    if endpoint_ids:
        for a in session.scalars(select(EndpointAdapter).where(
                EndpointAdapter.endpoint_id.in_(endpoint_ids), EndpointAdapter.status == "attached")
                .order_by(EndpointAdapter.created_at, EndpointAdapter.name)):
            out[a.endpoint_id].append(a)
    return out


def to_read(a: EndpointAdapter, job_name: str | None) -> AdapterRead:
    return AdapterRead(name=a.name, status=a.status, job_name=job_name, registered_model_id=a.registered_model_id,
                       base_model=a.base_model, created_at=a.created_at, detached_at=a.detached_at)


class AdapterSources:
    """Checks an adapter reference (job or registered model) and returns its row values."""

    def __init__(self, session: Session, store: Any) -> None:
        self.session, self.store = session, store

    def values(self, user: User, ref: AdapterRef, base_model: str, param: str) -> dict[str, Any]:
        if ref.job_name is not None:
            job = self.session.scalar(select(TrainingJob).where(TrainingJob.user_id == user.id,
                                                                   TrainingJob.job_name == ref.job_name))
            catalog.require_owned(job, user.id, "training job", ref.job_name, f"{param}job_name")
            assert job is not None
            if job.status != JobStatus.COMPLETED:
                raise Conflict(f"Training job {job.job_name!r} is {job.status}; only a Completed job can be "
                               "attached", code="job_not_completed", param=f"{param}job_name")
            found = {"job_id": job.id, "registered_model_id": None, "model_uri": job.model_artifacts_uri or "",
                     "base_model": job.base_model, "name": ref.name or job.job_name}
            field = "job_name"
        else:
            model = self.session.get(RegisteredModel, ref.model_id)
            catalog.require_owned(model, user.id, "registered model", str(ref.model_id), f"{param}model_id")
            assert model is not None
            found = {"job_id": model.job_id, "registered_model_id": model.id, "model_uri": model.model_uri,
                     "base_model": model.base_model, "name": ref.name or model.model_name}
            field = "model_id"
        if found["base_model"] != base_model:
            raise ValidationFailed(
                f"Adapter {found['name']!r} was trained on {found['base_model']!r}, but this endpoint serves "
                f"{base_model!r}; attach it to an endpoint of its own base model", code="base_model_mismatch",
                param=f"{param}{field}")
        key = self.store.key_from_uri(found["model_uri"]) if found["model_uri"] else None
        if key is None or not key.startswith(user_prefix(user.id)):
            raise Conflict(f"The model artifacts of adapter {found['name']!r} are missing from storage",
                           code="model_artifacts_missing", param=f"{param}{field}")
        return found


def new_rows(session: Session, store: Any, user: User, ep_id: str, base_model: str,
             refs: list[AdapterRef], prefix: str = "adapters") -> list[EndpointAdapter]:
    """Rows for a deploy request's adapters (checked; names unique)."""
    sources, rows, seen = AdapterSources(session, store), [], set()
    for i, ref in enumerate(refs):
        param = f"{prefix}[{i}]."
        v = sources.values(user, ref, base_model, param)
        if v["name"] in seen:
            raise ValidationFailed(f"Two adapters are named {v['name']!r}; give one a different name",
                                   code="duplicate_adapter", param=f"{param}name")
        seen.add(v["name"])
        rows.append(EndpointAdapter(endpoint_id=ep_id, user_id=user.id, status="attached", created_at=utcnow(), **v))
    return rows


class AdapterService:
    def __init__(self, session: Session, store: Any, backends: Any) -> None:
        self.session, self.store, self.backends = session, store, backends

    def _base_endpoint(self, user: User, endpoint_name: str) -> Endpoint:
        ep = self.session.scalar(select(Endpoint).where(Endpoint.endpoint_name == endpoint_name,
                                                        Endpoint.user_id == user.id))
        if ep is None or ep.status == EndpointStatus.DELETED:
            raise NotFound(f"No endpoint {endpoint_name!r}", param="endpoint_name")
        if not is_base_endpoint(ep):
            raise Conflict(f"Endpoint {endpoint_name!r} serves one model; deploy a base model (base_model and "
                           "adapters) to attach adapters", code="not_a_base_model_endpoint", param="endpoint_name")
        if ep.status in (EndpointStatus.DELETING, EndpointStatus.FAILED):
            raise Conflict(f"Endpoint {endpoint_name!r} is {ep.status}", code="endpoint_not_in_service",
                           param="endpoint_name")
        return ep

    def _live(self, ep: Endpoint, name: str) -> EndpointAdapter | None:
        return self.session.scalar(select(EndpointAdapter).where(
            EndpointAdapter.endpoint_id == ep.id, EndpointAdapter.name == name, EndpointAdapter.status == "attached"))

    def attach(self, user: User, endpoint_name: str, ref: AdapterRef) -> AdapterRead:
        ep = self._base_endpoint(user, endpoint_name)
        values = AdapterSources(self.session, self.store).values(user, ref, ep.base_model or "", "")
        if self._live(ep, values["name"]) is not None:
            raise Conflict(f"An adapter named {values['name']!r} is already attached to {endpoint_name!r}",
                           code="adapter_exists", param="name")
        if len(attached(self.session, [ep.id])[ep.id]) >= MAX_ADAPTERS:
            raise Conflict(f"At most {MAX_ADAPTERS} adapters per endpoint", code="too_many_adapters")
        row = EndpointAdapter(endpoint_id=ep.id, user_id=user.id, status="attached", created_at=utcnow(), **values)
        handle = dict(ep.backend_handle or {})
        self.session.commit()
        if DEPLOYED in handle:  # the server runs: it registers the adapter now, without a restart
            key = self.store.key_from_uri(row.model_uri)
            self.backends.endpoints.attach_adapter(handle, row.name, key)
        self.session.add(row)
        events.record(self.session, user_id=user.id, resource_type=RESOURCE, resource_id=ep.id, type="adapter",
                      message=f"Adapter {row.name!r} attached", data={"adapter": row.name, "action": "attach"})
        self.session.commit()
        return to_read(row, ref.job_name)

    def detach(self, user: User, endpoint_name: str, name: str) -> AdapterRead:
        ep = self._base_endpoint(user, endpoint_name)
        row = self._live(ep, name)
        if row is None:
            raise NotFound(f"No adapter {name!r} on endpoint {endpoint_name!r}", code="adapter_not_found",
                           param="adapter_name")
        handle = dict(ep.backend_handle or {})
        self.session.commit()
        if DEPLOYED in handle:  # the server unloads it and frees its weights
            self.backends.endpoints.detach_adapter(handle, name)
        row.status, row.detached_at = "detached", utcnow()
        events.record(self.session, user_id=user.id, resource_type=RESOURCE, resource_id=ep.id, type="adapter",
                      message=f"Adapter {name!r} detached", data={"adapter": name, "action": "detach"})
        self.session.commit()
        return to_read(row, None)

    def usage(self, user: User, endpoint_name: str) -> list[AdapterUsage]:
        ep = self.session.scalar(select(Endpoint).where(Endpoint.endpoint_name == endpoint_name,
                                                        Endpoint.user_id == user.id))
        if ep is None:
            raise NotFound(f"No endpoint {endpoint_name!r}", param="endpoint_name")
        r = InferenceRecord
        rows = self.session.execute(
            select(r.adapter, func.count(), func.sum(case((r.streamed, 1), else_=0)), func.sum(r.prompt_tokens),
                   func.sum(r.completion_tokens)).where(r.endpoint_id == ep.id).group_by(r.adapter)
            .order_by(r.adapter)).tuples().all()
        return [AdapterUsage(adapter=a, requests=n, streamed=int(st or 0), prompt_tokens=int(p or 0),
                             completion_tokens=int(c or 0)) for a, n, st, p, c in rows]

    def list_for(self, user: User, endpoint_name: str) -> list[AdapterRead]:
        ep = self._base_endpoint(user, endpoint_name)
        rows = attached(self.session, [ep.id])[ep.id]
        names = job_names(self.session, [a.job_id for a in rows])
        return [to_read(a, names.get(a.job_id or "")) for a in rows]


def job_names(session: Session, ids: list[str | None]) -> dict[str, str]:
    wanted = {i for i in ids if i}
    if not wanted:
        return {}
    return dict(session.execute(select(TrainingJob.id, TrainingJob.job_name)
                                .where(TrainingJob.id.in_(wanted))).tuples().all())
