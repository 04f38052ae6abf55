"""The endpoint state machine, advanced by the worker each pass.

Creating (no server yet) -> deploy -> Creating -> InService | Failed; InService whose server died ->
one redeploy on the first pass after a restart ("restarting"), else Failed; Deleting -> delete once ->
Deleted. Cost accrues while InService. Every status change is an event.

The worker is the only writer of `backend_handle`; the API and the worker both change `status`, so
status writes are conditional on the status read (`service.transition`). No transaction stays open
while a backend works (see the service module's note on SQLite and PostgreSQL).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from app import catalog, events, leases
from app.backends.base import BackendEndpointStatus, EndpointSpec
from app.db import utcnow
from app.deployments import adapters
from app.deployments.models import Endpoint
from app.deployments.service import RESOURCE, backend_endpoint_name, banked_seconds, transition
from app.errors import AppError
from app.statuses import ENDPOINT_ACTIVE, EndpointStatus

log = logging.getLogger("llmtuner.deployments")

DEPLOYED = "deployed_at"  # handle key set once backend.deploy returned


@dataclass
class _Slots:
    """Local model servers running now, against settings.worker.max_concurrent_local_endpoints."""

    running: int
    limit: int

    def full(self, ep: Endpoint) -> bool:
        return ep.backend == "local" and self.running >= self.limit


def reconcile(ctx: Any) -> None:
    with ctx.sessionmaker() as session:
        rows = list(session.scalars(select(Endpoint).where(Endpoint.status.in_(ENDPOINT_ACTIVE))
                                    .order_by(Endpoint.created_at, Endpoint.id)))
        slots = _Slots(sum(1 for e in rows if e.backend == "local" and DEPLOYED in (e.backend_handle or {})),
                       ctx.settings.worker.max_concurrent_local_endpoints)
        ids = [e.id for e in rows]
    for ep_id in ids:
        with ctx.sessionmaker() as session:
            # One worker at a time follows an endpoint (app/leases.py): no double deploy or event.
            if not leases.claim(session, RESOURCE, ep_id, ctx.owner, ctx.settings.worker.lease_seconds):
                continue
            try:
                _reconcile_one(ctx, session, ep_id, slots)
            except Exception:  # one endpoint must not stop the others
                log.exception("reconciling endpoint %s failed", ep_id)
                session.rollback()


def _reconcile_one(ctx: Any, session: Session, ep_id: str, slots: _Slots) -> None:
    ep = session.get(Endpoint, ep_id)
    if ep is None or ep.status not in ENDPOINT_ACTIVE:
        return
    handle = dict(ep.backend_handle or {})
    if ep.status == EndpointStatus.DELETING:
        _delete(ctx, session, ep, handle, slots)
    elif DEPLOYED not in handle:
        if ep.status == EndpointStatus.CREATING:
            _deploy(ctx, session, ep, handle, slots)
        else:
            _fail(session, ep, "The endpoint has no model server (its deployment record is incomplete)", slots)
    else:
        session.commit()  # end the read transaction while the backend answers
        _apply(ctx, session, ep, handle, ctx.backends.endpoints.describe(dict(handle)), slots)
    session.commit()


def _event(session: Session, ep: Endpoint, type_: str, message: str, level: str = "info",
           **data: Any) -> None:
    events.record(session, user_id=ep.user_id, resource_type=RESOURCE, resource_id=ep.id, type=type_,
                  message=message, level=level, data=data)


def _status(session: Session, ep: Endpoint, new: str, message: str, level: str = "info", **values: Any) -> bool:
    previous = ep.status
    if not transition(session, ep, previous, status=new, **values):
        return False  # the API moved it meanwhile (e.g. Deleting): the next pass sees that
    _event(session, ep, "status_change", message, level, status=new, previous=previous)
    return True


def _save_handle(session: Session, ep: Endpoint, handle: dict[str, Any]) -> None:
    session.execute(update(Endpoint).where(Endpoint.id == ep.id).values(backend_handle=handle)
                    .execution_options(synchronize_session=False))
    set_committed_value(ep, "backend_handle", handle)


def _reason(e: BaseException) -> str:
    return e.message if isinstance(e, AppError) else f"{type(e).__name__}: {e}"


def _spec(ctx: Any, ep: Endpoint, session: Session) -> EndpointSpec:
    if adapters.is_base_endpoint(ep):  # the base model itself, with the adapters attached now
        attached = {a.name: ctx.store.key_from_uri(a.model_uri) for a in adapters.attached(session, [ep.id])[ep.id]}
        return EndpointSpec(endpoint_name=backend_endpoint_name(ep), user_id=ep.user_id, model_uri=ep.model_uri,
                            model_key="",
                            base_model_source=catalog.resolve_source(
                                ctx.settings, catalog.base_model(ctx.settings, ep.base_model or "")),
                            instance_type=ep.instance_type, instance_count=ep.instance_count, adapters=attached)
    key = ctx.store.key_from_uri(ep.model_uri)
    if key is None:
        raise ValueError(f"the model URI {ep.model_uri} is not in this deployment's object store")
    source = None
    if ep.base_model:
        try:
            source = catalog.resolve_source(ctx.settings, catalog.base_model(ctx.settings, ep.base_model))
        except AppError:  # not a catalogue id: the server reads the base model recorded in the artifact
            source = None
    return EndpointSpec(endpoint_name=backend_endpoint_name(ep), user_id=ep.user_id, model_uri=ep.model_uri,
                        model_key=key, base_model_source=source, instance_type=ep.instance_type,
                        instance_count=ep.instance_count)


def _start(ctx: Any, session: Session, ep: Endpoint, extra: dict[str, Any]) -> dict[str, Any] | None:
    """backend.deploy; the new handle, or None after marking the endpoint Failed."""
    try:
        spec = _spec(ctx, ep, session)
        session.commit()
        handle = dict(ctx.backends.endpoints.deploy(spec))
    except Exception as e:  # noqa: BLE001 - the reason is shown to the user
        log.warning("deploying %s failed: %s", ep.endpoint_name, e)
        session.rollback()
        _status(session, ep, EndpointStatus.FAILED, f"Deployment failed: {_reason(e)}", "error",
                failure_reason=_reason(e), accrued_seconds=banked_seconds(ep, utcnow()), accrual_started_at=None)
        return None
    handle.update(extra, **{DEPLOYED: time.time()})
    _save_handle(session, ep, handle)
    return handle


def _deploy(ctx: Any, session: Session, ep: Endpoint, handle: dict[str, Any], slots: _Slots) -> None:
    if slots.full(ep):
        if not handle.get("waiting"):
            _save_handle(session, ep, {**handle, "waiting": True})
            _event(session, ep, "waiting", f"Waiting for a free slot: {slots.limit} local endpoint(s) already "
                   "run on this machine (settings.worker.max_concurrent_local_endpoints)")
        return
    if _start(ctx, session, ep, {}) is not None:
        slots.running += ep.backend == "local"
        _event(session, ep, "deploying", f"Starting the model server on the {ep.backend} backend")


def _fail(session: Session, ep: Endpoint, reason: str, slots: _Slots) -> None:
    if _status(session, ep, EndpointStatus.FAILED, f"Endpoint failed: {reason}", "error", failure_reason=reason,
               accrued_seconds=banked_seconds(ep, utcnow()), accrual_started_at=None):
        slots.running -= ep.backend == "local" and DEPLOYED in (ep.backend_handle or {})


def _apply(ctx: Any, session: Session, ep: Endpoint, handle: dict[str, Any], st: BackendEndpointStatus,
           slots: _Slots) -> None:
    if st.handle_update and {**handle, **st.handle_update} != handle:  # (SageMaker repeats it every pass)
        handle = {**handle, **st.handle_update}
        _save_handle(session, ep, handle)
    now = utcnow()
    if st.status in (EndpointStatus.IN_SERVICE, EndpointStatus.UPDATING):
        if ep.status == EndpointStatus.IN_SERVICE:
            # Still up: nothing to write. Its cost accrues from accrual_started_at (every reader adds the
            # running stretch), and a write on every pass would move the user's data version
            # (app/user_cache.py) and so empty the cache of everyone with a live endpoint.
            return
        if _status(session, ep, EndpointStatus.IN_SERVICE, "Endpoint is InService", accrual_started_at=now,
                   in_service_at=ep.in_service_at or now, failure_reason=None) and handle.get("restarted"):
            _save_handle(session, ep, {k: v for k, v in handle.items() if k != "restarted"})
        return
    if st.status == EndpointStatus.CREATING:
        return
    reason = st.failure_reason or f"The model server is {st.status}"
    restartable = ep.status in (EndpointStatus.IN_SERVICE, EndpointStatus.CREATING)
    if ctx.first_pass and restartable and not handle.get("restarted"):
        _restart(ctx, session, ep, reason, slots)
    else:
        _fail(session, ep, reason, slots)


def _restart(ctx: Any, session: Session, ep: Endpoint, reason: str, slots: _Slots) -> None:
    """After an API restart a server found dead gets one new start; it is never left InService."""
    previous = ep.status
    if not _status(session, ep, EndpointStatus.CREATING, f"Restarting the model server after a restart found it gone: "
                   f"{reason}", "warning", accrued_seconds=banked_seconds(ep, utcnow()), accrual_started_at=None):
        return
    _event(session, ep, "restarting", "Restarting the endpoint's model server", "warning", previous=previous,
           reason=reason)
    session.commit()
    if _start(ctx, session, ep, {"restarted": True}) is None:
        slots.running -= ep.backend == "local"


def _delete(ctx: Any, session: Session, ep: Endpoint, handle: dict[str, Any], slots: _Slots) -> None:
    now = utcnow()
    done: dict[str, Any] = {"deleted_at": now, "accrued_seconds": banked_seconds(ep, now),
                            "accrual_started_at": None}
    if DEPLOYED not in handle:
        _status(session, ep, EndpointStatus.DELETED, "Endpoint deleted (no model server had started)", **done)
        return
    backend = ctx.backends.endpoints
    if not handle.get("delete_requested"):
        session.commit()
        handle = dict(handle)
        backend.delete(handle)  # may record in the handle (the local backend marks it "deleting")
        handle["delete_requested"] = time.time()
        _save_handle(session, ep, handle)
        _event(session, ep, "deleting", "Stopping the model server")
        session.commit()
    st = backend.describe(dict(handle))
    if st.status == EndpointStatus.DELETED:
        if _status(session, ep, EndpointStatus.DELETED, "Endpoint deleted", **done):
            slots.running -= ep.backend == "local"
