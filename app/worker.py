"""The reconciler: advances training jobs, endpoints and evaluations.

Embedded in the API process by default (a thread), or run alone with `python -m app.worker`
when several API replicas share one database. Every pass reads the state from the database
and the backends, so a restart simply picks up where things are (recovery is a pass).
"""

from __future__ import annotations

import logging
import threading

from app import catalog, leases, wiring
from app.backends.base import Backends
from app.config import Settings
from app.deployments import reconcile as deployments
from app.evaluation import reconcile as evaluation
from app.runtime import Reconciler, SessionFactory, WorkerContext, wait_for_wake
from app.storage import ObjectStore
from app.training import reconcile as training
from app.usage import service as usage

log = logging.getLogger("llmtuner.worker")

# Each pass runs these in this order; a domain with work to follow must be listed here.
RECONCILERS: list[Reconciler] = [training.reconcile, deployments.reconcile, evaluation.reconcile, usage.reconcile]


class Worker:
    def __init__(self, sessionmaker: SessionFactory, store: ObjectStore, backends: Backends,
                 settings: Settings) -> None:
        self.ctx = WorkerContext(sessionmaker, store, backends, settings, first_pass=True)
        self._lock = threading.Lock()

    def tick(self) -> None:
        """One reconciliation pass over everything that is not finished."""
        with self._lock:
            if self.ctx.first_pass:
                with self.ctx.sessionmaker() as session:
                    leases.release_dead_owners(session, self.ctx.owner)
            for reconcile in RECONCILERS:
                try:
                    reconcile(self.ctx)
                except Exception:  # one failing domain must not stop the others
                    log.exception("reconcile failed in %s", reconcile.__module__)
            self.ctx.first_pass = False

    def run_forever(self, stop: threading.Event) -> None:
        log.info("worker started (backend=%s)", self.ctx.settings.backend)
        try:
            catalog.prepare_builtin_models(self.ctx.settings)
        except Exception:  # submissions that need them report the problem
            log.exception("could not build the built-in base models")
        while not stop.is_set():
            self.tick()
            wait_for_wake(self.ctx.settings.worker.poll_interval_seconds)
        with self.ctx.sessionmaker() as session:  # let other workers take over now, not at expiry
            leases.release_all(session, self.ctx.owner)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings()
    services = wiring.build(settings)
    try:
        Worker(services.sessionmaker, services.store, services.backends, settings).run_forever(threading.Event())
    finally:
        services.close()


if __name__ == "__main__":
    main()
