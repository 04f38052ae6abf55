"""What the worker's reconcilers are given, and the signal that wakes the embedded worker.

Kept apart from app/worker.py (which lists the reconcilers) so that the domains' services and
reconcilers can use these without importing the worker, and so without an import circle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from app import leases
from app.backends.base import Backends
from app.config import Settings
from app.storage import ObjectStore

SessionFactory = sessionmaker[Session]


@dataclass
class WorkerContext:
    sessionmaker: SessionFactory
    store: ObjectStore
    backends: Backends
    settings: Settings
    first_pass: bool = False
    # This worker's lease owner id (app/leases.py): it follows only what it holds a lease on.
    owner: str = field(default_factory=leases.new_owner)


Reconciler = Callable[[WorkerContext], None]

# Set by a create in this process so that the embedded worker starts the new work now rather than
# at its next poll (a separate worker process polls).
_wake = threading.Event()


def wake() -> None:
    _wake.set()


def wait_for_wake(timeout: float) -> None:
    """Sleep until `wake()` is called or `timeout` seconds have passed."""
    _wake.wait(timeout)
    _wake.clear()
