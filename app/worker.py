"""The reconciler: advances training jobs, endpoints and evaluations.

Embedded in the API process by default (a thread), or run alone with `python -m app.worker`
when several API replicas share one database. Every pass reads the state from the database
and the backends, so a restart simply picks up where things are (recovery is a pass).
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

from app.config import Settings

log = logging.getLogger("llmtuner.worker")

# Each module exposes `reconcile(ctx: WorkerContext) -> None`.
RECONCILERS = [
    "app.training.reconcile", "app.deployments.reconcile", "app.evaluation.reconcile", "app.usage.service",
]


@dataclass
class WorkerContext:
    sessionmaker: Any
    store: Any
    backends: Any
    settings: Settings
    first_pass: bool = False


class Worker:
    def __init__(self, sessionmaker: Any, store: Any, backends: Any, settings: Settings) -> None:
        self.ctx = WorkerContext(sessionmaker, store, backends, settings, first_pass=True)
        self._lock = threading.Lock()
        self._modules = []
        for name in RECONCILERS:
            try:
                self._modules.append(importlib.import_module(name))
            except ModuleNotFoundError as e:
                if e.name != name:
                    raise

    def tick(self) -> None:
        """One reconciliation pass over everything that is not finished."""
        with self._lock:
            for mod in self._modules:
                try:
                    mod.reconcile(self.ctx)
                except Exception:  # one failing domain must not stop the others
                    log.exception("reconcile failed in %s", mod.__name__)
            self.ctx.first_pass = False

    def run_forever(self, stop: threading.Event) -> None:
        log.info("worker started (backend=%s)", self.ctx.settings.backend)
        while not stop.is_set():
            self.tick()
            stop.wait(self.ctx.settings.worker.poll_interval_seconds)


def main() -> None:
    from app.db import make_engine, make_sessionmaker
    from app.main import build_backends, build_store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings()
    store = build_store(settings)
    worker = Worker(make_sessionmaker(make_engine(settings.resolved_database_url)), store,
                    build_backends(settings, store), settings)
    worker.run_forever(threading.Event())


if __name__ == "__main__":
    main()
