"""Leases: which worker process follows a resource (a training job, an endpoint, an evaluation)
right now, so that any number of API replicas and `python -m app.worker` processes never submit,
follow or record the same thing twice.

A lease is a row (resource type, resource id, owner, expiry). `claim` is one atomic upsert: it
takes a free or expired lease, renews the caller's own, and fails while another live owner holds
it (SQLite and PostgreSQL alike: INSERT ... ON CONFLICT DO UPDATE ... WHERE). A worker renews the
leases it holds on every pass, so one that dies lets its work go after `worker.lease_seconds`.
Writes made under a lease are fenced: `still_held` inside the writing transaction makes a worker
that lost its lease (it stalled past the expiry and another took over) roll back instead of
recording the same events twice.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

from sqlalchemy import String, and_, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from app.db import Base, utcnow

# The singleton lease of the process that hands queued work to the backends (app/training/reconcile.py):
# one scheduler at a time keeps the local slots' count exact across processes.
SCHEDULER = ("scheduler", "submit")


class Lease(Base):
    __tablename__ = "leases"

    resource_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(index=True)


class LeaseLost(Exception):
    """Another worker holds the lease now: roll back what this one was about to record."""


def new_owner() -> str:
    """An owner id unique to this worker: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claim(session: Session, resource_type: str, resource_id: str, owner: str, ttl_seconds: float) -> bool:
    """Take or renew the lease; False while another owner's lease is live. Commits the session: call it
    between units of work."""
    now = utcnow()
    expires = now + timedelta(seconds=ttl_seconds)
    dialect = session.get_bind().dialect.name
    ins = (postgresql.insert(Lease) if dialect == "postgresql" else sqlite.insert(Lease)).values(
        resource_type=resource_type, resource_id=resource_id, owner=owner, expires_at=expires)
    stmt = ins.on_conflict_do_update(
        index_elements=[Lease.resource_type, Lease.resource_id],
        set_={"owner": owner, "expires_at": expires},
        where=or_(Lease.owner == owner, Lease.expires_at < now),
    ).returning(Lease.owner)
    got = session.execute(stmt).first() is not None  # no row: the WHERE kept another owner's lease
    session.commit()
    return got


def still_held(session: Session, resource_type: str, resource_id: str, owner: str, ttl_seconds: float) -> None:
    """Inside a writing transaction: extend the lease, or raise LeaseLost when it is no longer ours."""
    now = utcnow()
    res = session.connection().execute(
        update(Lease).where(Lease.resource_type == resource_type, Lease.resource_id == resource_id,
                            Lease.owner == owner)
        .values(expires_at=now + timedelta(seconds=ttl_seconds)))
    if res.rowcount != 1:
        raise LeaseLost(f"{resource_type} {resource_id}")


def release(session: Session, resource_type: str, resource_id: str, owner: str) -> None:
    """Give the lease up (the resource has ended); committed at once."""
    session.execute(delete(Lease).where(Lease.resource_type == resource_type, Lease.resource_id == resource_id,
                                        Lease.owner == owner))
    session.commit()


def release_all(session: Session, owner: str) -> None:
    """On a clean shutdown: let other workers take over at once rather than after the expiry."""
    session.execute(delete(Lease).where(Lease.owner == owner))
    session.commit()


def release_dead_owners(session: Session, owner: str) -> None:
    """Leases of workers on this host that are gone (the API restarted): free them now rather than
    after their expiry. A pid that runs again, or this process's own pid under another id (an
    earlier worker of this process), counts as gone."""
    host, pid, _ = owner.rsplit(":", 2)
    for other in set(session.scalars(select(Lease.owner).where(Lease.owner.startswith(f"{host}:")))):
        _, other_pid, _ = other.rsplit(":", 2)
        if other != owner and (other_pid == pid or not _pid_alive(int(other_pid))):
            session.execute(delete(Lease).where(Lease.owner == other))
    session.commit()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def purge_expired(session: Session, older_than_seconds: float = 3600) -> None:
    """Drop leases long expired (resources deleted or ended while no one held them)."""
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    session.execute(delete(Lease).where(and_(Lease.expires_at < cutoff)))
    session.commit()
