"""Endpoints: deploy (recorded here, started by the worker), status, delete, invoke, generate.

The API only records what the user asked for; app/deployments/reconcile.py talks to the backend
that starts and stops model servers. Backend and object-store calls never run on the event loop.
Before awaiting one, a service ends its read transaction (`end_read`): an SQLite WAL reader that
writes after another connection committed fails at once instead of waiting, and a PostgreSQL
connection should not sit idle in a transaction while a model generates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Select, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from app import catalog, events, idempotency
from app.auth.models import User
from app.backends.base import Backends
from app.config import Settings
from app.db import new_id, utcnow
from app.deployments import adapters, reads
from app.deployments.models import Endpoint, EndpointAdapter
from app.deployments.schemas import (
    AdapterRead,
    DeploymentSummary,
    DeployRequest,
    DeployResponse,
    EndpointRead,
    GenerateRequest,
    GenerateResponse,
    GenerateUsage,
    InvokeRequest,
    InvokeResponse,
    InvokeResult,
    Usage,
)
from app.errors import Conflict, GatewayTimeout, NotFound, ValidationFailed
from app.events import Event
from app.registry.models import RegisteredModel
from app.statuses import EndpointStatus
from app.storage import ObjectStore, owned_key_from_uri, user_prefix
from app.training.models import TrainingJob

RESOURCE = "endpoint"
DEPLOY_ROUTE = "POST /api/deploy-model"
# Seconds the API waits beyond settings.invoke_timeout_seconds for a backend that ignores it.
INVOKE_GRACE_SECONDS = 5.0


def accrued_cost(endpoint: Endpoint, now: datetime | None = None) -> float:
    """USD spent so far: banked seconds plus the running InService stretch, at the endpoint's price."""
    return reads.accrued_cost(endpoint.status, endpoint.accrued_seconds, endpoint.accrual_started_at,
                              endpoint.price_per_hour, now)


def backend_endpoint_name(endpoint: Endpoint) -> str:
    """The endpoint's name on the backend, unique across users (SageMaker's names are per account, the
    local backend's folders per machine): the user's name, cut to fit, and 8 characters of its id."""
    return f"{endpoint.endpoint_name[:54].rstrip('-')}-{endpoint.id[:8]}"


def _best(session: Session, query: Select[Any]) -> Endpoint | None:
    rows = list(session.scalars(query.order_by(Endpoint.created_at.desc())))
    return next((e for e in rows if e.status == EndpointStatus.IN_SERVICE), rows[0] if rows else None)


def endpoint_for_model(session: Session, user: User, model_id: str) -> Endpoint | None:
    """The caller's live endpoint serving `model_id`: an endpoint name, a registered model (by
    model_id, or by model_name meaning its latest version), or a deployment's model_name.
    InService ones first; None when nothing live serves it."""
    live = select(Endpoint).where(Endpoint.user_id == user.id, Endpoint.status != EndpointStatus.DELETED)
    by_name = session.scalar(live.where(Endpoint.endpoint_name == model_id))
    if by_name is not None:
        return by_name
    model = session.get(RegisteredModel, model_id)
    if model is None or model.user_id != user.id:
        model = session.scalar(
            select(RegisteredModel).where(RegisteredModel.user_id == user.id, RegisteredModel.model_name == model_id)
            .order_by(RegisteredModel.version.desc()).limit(1))
    if model is not None:
        match = [Endpoint.registered_model_id == model.id]
        if model.job_id:
            match.append(Endpoint.job_id == model.job_id)
        return _best(session, live.where(or_(*match)))
    return _best(session, live.where(Endpoint.model_name == model_id))


def endpoint_for_request(session: Session, user: User, model: str) -> tuple[Endpoint, str | None] | None:
    """(endpoint, adapter name or None) serving `model` for this user: an attached adapter's name
    first (on an InService endpoint if one has it), else an endpoint's own model (service's lookup)."""
    rows = list(session.execute(
        select(Endpoint, EndpointAdapter).join(EndpointAdapter, EndpointAdapter.endpoint_id == Endpoint.id)
        .where(EndpointAdapter.user_id == user.id, EndpointAdapter.name == model,
               EndpointAdapter.status == "attached", Endpoint.status != "Deleted")
        .order_by(Endpoint.created_at.desc())).tuples())
    if rows:
        ep = next((e for e, _ in rows if e.status == "InService"), rows[0][0])
        return ep, model
    single = endpoint_for_model(session, user, model)
    return (single, None) if single is not None else None


def transition(session: Session, endpoint: Endpoint, expected: str, **values: Any) -> bool:
    """Write `values` only if the endpoint is still in `expected` status (the API and the worker
    both move endpoints; whoever comes second sees False and leaves the row alone)."""
    res = session.execute(
        update(Endpoint).where(Endpoint.id == endpoint.id, Endpoint.status == expected).values(**values)
        .execution_options(synchronize_session=False))
    if getattr(res, "rowcount", 0) != 1:
        return False
    for k, v in values.items():
        set_committed_value(endpoint, k, v)
    return True


def banked_seconds(endpoint: Endpoint, now: datetime) -> float:
    """accrued_seconds with the running InService stretch folded in (for stopping or moving accrual)."""
    seconds = endpoint.accrued_seconds or 0.0
    if endpoint.accrual_started_at is not None:
        seconds += max(0.0, (now - endpoint.accrual_started_at).total_seconds())
    return seconds


def to_read(endpoint: Endpoint, job_name: str | None, now: datetime | None = None,
            adapter_list: list[AdapterRead] | None = None) -> EndpointRead:
    values = tuple(getattr(endpoint, c.key) for c in reads.COLUMNS)
    return EndpointRead(**reads.endpoint_body(values, job_name, now, adapter_list))  # type: ignore[arg-type]


class EndpointService:
    def __init__(self, session: Session, settings: Settings, store: ObjectStore, backends: Backends) -> None:
        self.session, self.settings, self.store, self.backends = session, settings, store, backends

    def end_read(self) -> None:
        if self.session.in_transaction():  # nothing pending: only ends the read (see the module doc)
            self.session.commit()

    # Lookups -----------------------------------------------------------------------------------
    def owned(self, user: User, endpoint_name: str, *, live: bool = False) -> Endpoint:
        """The caller's endpoint by name (404 for anyone else's); `live` also refuses Deleted ones."""
        q = select(Endpoint).where(Endpoint.endpoint_name == endpoint_name, Endpoint.user_id == user.id)
        ep = self.session.scalar(q)
        if ep is None or (live and ep.status == EndpointStatus.DELETED):
            raise NotFound(f"No endpoint {endpoint_name!r}", param="endpoint_name")
        return ep

    def _job_names(self, endpoints: list[Endpoint]) -> dict[str, str]:
        ids = {e.job_id for e in endpoints if e.job_id}
        if not ids:
            return {}
        return dict(self.session.execute(
            select(TrainingJob.id, TrainingJob.job_name).where(TrainingJob.id.in_(ids))).tuples().all())

    def _adapters(self, endpoints: list[Endpoint]) -> dict[str, list[AdapterRead]]:
        rows = adapters.attached(self.session, [e.id for e in endpoints if adapters.is_base_endpoint(e)])
        names = adapters.job_names(self.session, [a.job_id for lst in rows.values() for a in lst])
        return {i: [adapters.to_read(a, names.get(a.job_id or "")) for a in lst] for i, lst in rows.items()}

    def read(self, endpoint: Endpoint) -> EndpointRead:
        return to_read(endpoint, self._job_names([endpoint]).get(endpoint.job_id or ""), None,
                       self._adapters([endpoint]).get(endpoint.id))

    def events(self, user: User, endpoint_name: str) -> list[Event]:
        return events.list_for(self.session, RESOURCE, self.owned(user, endpoint_name).id)

    # Deploy ------------------------------------------------------------------------------------
    def deploy(self, user: User, data: DeployRequest, idem_key: str | None) -> DeployResponse:
        req_hash = idempotency.body_hash(data.model_dump())
        if idem_key:
            rec = idempotency.lookup(self.session, user.id, DEPLOY_ROUTE, idem_key, req_hash)
            if rec is not None:
                return DeployResponse.model_validate(rec.response)
        itype = catalog.instance_type(self.settings, data.instance_type, "inference")
        price = round(float(itype["inference"]) * data.initial_instance_count, 6)
        name = f"{data.model_name}-endpoint"
        job, model, uri, param = self._source(user, data)
        self._check_name_free(user, name)
        if data.base_model and not hasattr(self.backends.endpoints, "attach_adapter"):
            raise ValidationFailed(f"The {self.backends.endpoints.name} backend cannot serve adapters on a shared "
                                   "base model yet; deploy each adapter (job_name or model_id)", param="base_model",
                                   code="adapters_unsupported")
        ep_id = new_id()
        attach = adapters.new_rows(self.session, self.store, user, ep_id, uri, data.adapters) if data.base_model else []
        self.end_read()
        base_model: str | None
        if data.base_model:  # a base-model endpoint (app/deployments/adapters.py)
            model_uri, base_model = adapters.BASE_URI_PREFIX + uri, uri
        else:
            key = self._owned_key(user.id, uri, param)
            if job is None and model is None:
                job = self._job_for_key(user, key)
            model_uri = self.store.uri(key)
            base_model = job.base_model if job else model.base_model if model else None
        self._free_name(user, name)
        ep = Endpoint(
            id=ep_id, endpoint_name=name, user_id=user.id, model_name=data.model_name,
            job_id=(job.id if job else model.job_id if model else None),
            registered_model_id=model.id if model else None, model_uri=model_uri,
            base_model=base_model,
            instance_type=data.instance_type, instance_count=data.initial_instance_count,
            backend=self.backends.endpoints.name, backend_handle={}, status=EndpointStatus.CREATING,
            price_per_hour=price, accrued_seconds=0.0, created_at=utcnow(),
        )
        self.session.add(ep)
        self.session.flush()  # the endpoint row before its adapters' (their foreign key)
        self.session.add_all(attach)
        events.record(self.session, user_id=user.id, resource_type=RESOURCE, resource_id=ep.id,
                      type="status_change", message=f"Deployment of {ep.model_uri} requested on "
                      f"{data.instance_type} x{data.initial_instance_count}",
                      data={"status": EndpointStatus.CREATING, "previous": None})
        out = DeployResponse(deployment=DeploymentSummary(
            endpoint_name=name, status=EndpointStatus.CREATING, instance_type=data.instance_type,
            estimated_cost_per_hour=price))
        if idem_key:
            idempotency.remember(self.session, user.id, DEPLOY_ROUTE, idem_key, req_hash, 202,
                                 out.model_dump(mode="json"))
        try:
            self.session.commit()
        except IntegrityError as e:  # another request took the name between our check and commit
            self.session.rollback()
            raise self._name_taken(name) from e
        return out

    def _name_taken(self, name: str) -> Conflict:
        return Conflict(f"You already have an endpoint named {name!r}; choose another model_name, or delete "
                        "that endpoint first", code="endpoint_exists", param="model_name")

    def _holder(self, user: User, name: str) -> Endpoint | None:
        """The caller's endpoint of that name: names are per user, others' are neither told nor taken."""
        return self.session.scalar(select(Endpoint).where(Endpoint.user_id == user.id, Endpoint.endpoint_name == name))

    def _check_name_free(self, user: User, name: str) -> None:
        holder = self._holder(user, name)
        if holder is not None and holder.status != EndpointStatus.DELETED:
            raise self._name_taken(name)

    def _free_name(self, user: User, name: str) -> None:
        """Names of the caller's deleted endpoints may be reused: the old row (kept for usage and cost)
        is renamed `{name}~{first 8 characters of its id}` (at most 63 characters, the column's width)."""
        self._check_name_free(user, name)
        holder = self._holder(user, name)
        if holder is not None:
            holder.endpoint_name = f"{name[:54]}~{holder.id[:8]}"
            self.session.flush()

    def _source(self, user: User, data: DeployRequest) -> tuple[TrainingJob | None, RegisteredModel | None,
                                                                 str, str]:
        """(job, registered model, model URI, param) for the request; 404 for anyone else's. For a
        base model, its catalogue id stands in for the URI."""
        if data.base_model is not None:
            return None, None, str(catalog.base_model(self.settings, data.base_model)["id"]), "base_model"
        if data.job_name is not None:
            job = self.session.scalar(select(TrainingJob).where(TrainingJob.user_id == user.id,
                                                                   TrainingJob.job_name == data.job_name))
            catalog.require_owned(job, user.id, "training job", data.job_name, "job_name")
            assert job is not None
            if job.status != "Completed":
                raise Conflict(f"Training job {job.job_name!r} is {job.status}; only a Completed job can be "
                               "deployed", code="job_not_completed", param="job_name")
            return job, None, job.model_artifacts_uri or "", "job_name"
        if data.model_id is not None:
            model = self.session.get(RegisteredModel, data.model_id)
            catalog.require_owned(model, user.id, "registered model", data.model_id, "model_id")
            assert model is not None
            return None, model, model.model_uri, "model_id"
        return None, None, data.model_s3_uri or "", "model_s3_uri"

    def _owned_key(self, user_id: str, uri: str, param: str) -> str:
        if param == "model_s3_uri":
            return owned_key_from_uri(self.store, uri, user_id)
        key = self.store.key_from_uri(uri) if uri else None
        if key is None or not key.startswith(user_prefix(user_id)) or not self.store.exists(key):
            raise Conflict(f"The model artifacts of this {param.replace('_', ' ')} are missing from storage",
                           code="model_artifacts_missing", param=param)
        return key

    def _job_for_key(self, user: User, key: str) -> TrainingJob | None:
        """The training job whose output a model URI points at (users/{id}/models/{job_name}/...)."""
        parts = key.split("/")
        if len(parts) < 4 or parts[2] != "models":
            return None
        return self.session.scalar(select(TrainingJob).where(
            TrainingJob.job_name == parts[3], TrainingJob.user_id == user.id))

    # Delete ------------------------------------------------------------------------------------
    def delete(self, user: User, endpoint_name: str) -> EndpointRead:
        """Deleting: cost stops now; the worker stops the server and marks it Deleted."""
        for _ in range(3):
            ep = self.owned(user, endpoint_name, live=True)
            if ep.status == EndpointStatus.DELETING:
                return self.read(ep)
            now, previous = utcnow(), ep.status
            if transition(self.session, ep, previous, status=EndpointStatus.DELETING, accrual_started_at=None,
                          accrued_seconds=banked_seconds(ep, now)):
                events.record(self.session, user_id=user.id, resource_type=RESOURCE, resource_id=ep.id,
                              type="status_change", message="Deletion requested; cost stopped accruing",
                              data={"status": EndpointStatus.DELETING, "previous": previous})
                self.session.commit()
                return self.read(ep)
            self.session.rollback()  # the worker moved it meanwhile: read it again
        raise Conflict("The endpoint is changing state; try again", code="endpoint_busy",
                       param="endpoint_name")

    # Inference ---------------------------------------------------------------------------------
    def _require_in_service(self, ep: Endpoint) -> None:
        if ep.status != EndpointStatus.IN_SERVICE:
            detail = f": {ep.failure_reason}" if ep.status == EndpointStatus.FAILED and ep.failure_reason else ""
            raise Conflict(f"Endpoint {ep.endpoint_name!r} is {ep.status}, not InService{detail}",
                           code="endpoint_not_in_service", param="endpoint_name")

    async def _call(self, ep: Endpoint, inputs: str, parameters: dict[str, Any]) -> dict[str, Any]:
        return await self.call(ep, {"inputs": inputs, "parameters": parameters})

    @staticmethod
    def payload(ep: Endpoint, adapter: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """A model server request; a base-model endpoint's names the adapter ("__base__": none)."""
        return {**body, "adapter": adapter or "__base__"} if adapters.is_base_endpoint(ep) else body

    async def call(self, ep: Endpoint, payload: dict[str, Any], adapter: str | None = None) -> dict[str, Any]:
        """The model server's answer for an endpoint from `serving` (whose read has ended)."""
        handle = dict(ep.backend_handle)
        payload = self.payload(ep, adapter, payload)
        timeout = self.settings.invoke_timeout_seconds
        try:
            out = await asyncio.wait_for(run_in_threadpool(
                self.backends.endpoints.invoke, handle, payload, timeout),
                timeout + INVOKE_GRACE_SECONDS)
        except TimeoutError as e:
            raise GatewayTimeout(f"Generation did not finish within {timeout:g} s; ask for fewer tokens",
                                 code="generation_timeout") from e
        first: dict[str, Any] = out[0] if out else {}
        return first

    def serving(self, find: Callable[[], Endpoint]) -> Endpoint:
        """The InService endpoint `find` names, its read ended: for the threadpool (`await
        run_in_threadpool(svc.serving, ...)`), since the routes that call a model server are async."""
        ep = find()
        self._require_in_service(ep)
        self.end_read()
        return ep

    async def invoke(self, user: User, data: InvokeRequest) -> InvokeResponse:
        ep = await run_in_threadpool(self.serving, lambda: self.owned(user, data.endpoint_name, live=True))
        params = data.parameters.payload() if data.parameters else {}
        first = await self._call(ep, data.input_text, params)
        details = first.get("details") or {}
        return InvokeResponse(result=InvokeResult(
            input_text=data.input_text, generated_text=str(first.get("generated_text", "")),
            endpoint_name=ep.endpoint_name, timestamp=utcnow(),
            usage=Usage(prompt_tokens=int(details.get("prompt_tokens") or 0),
                        completion_tokens=int(details.get("completion_tokens") or 0)),
            parameters=params))

    def _deployed(self, user: User, model_id: str) -> Endpoint:
        ep = endpoint_for_model(self.session, user, model_id)
        if ep is None:
            raise NotFound(f"No deployed model {model_id!r}: deploy it (POST /api/deploy-model) and wait "
                           "for InService, or name one of your endpoints", code="model_not_deployed",
                           param="model_id")
        return ep

    async def generate(self, user: User, data: GenerateRequest) -> GenerateResponse:
        ep = await run_in_threadpool(self.serving, lambda: self._deployed(user, data.model_id))
        first = await self._call(ep, data.prompt, {**data.parameters().payload(), "return_full_text": False})
        details = first.get("details") or {}
        prompt_tokens = int(details.get("prompt_tokens") or 0)
        completion_tokens = int(details.get("completion_tokens") or 0)
        return GenerateResponse(
            text=str(first.get("generated_text", "")), model_id=data.model_id, endpoint_name=ep.endpoint_name,
            usage=GenerateUsage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                total_tokens=prompt_tokens + completion_tokens))
