"""The composition root: the database engine, session factory, object store and compute backends
that settings name, built in one place for the API (app/main.py's lifespan) and the standalone
worker (`python -m app.worker`) alike."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from app import aws
from app.backends.base import Backends
from app.backends.local import build_local_backends
from app.backends.sagemaker import build_sagemaker_backends
from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.runtime import SessionFactory
from app.storage import ObjectStore
from app.storage.local import LocalObjectStore
from app.storage.s3 import S3ObjectStore

BackendsFactory = Callable[[Settings, ObjectStore], Backends]


def build_store(settings: Settings) -> ObjectStore:
    if settings.storage == "s3":
        return S3ObjectStore(aws.client(settings, "s3"), settings.aws.s3_bucket, settings.aws.kms_key_id)
    key = hashlib.sha256(b"signed-links:" + settings.jwt.secret.get_secret_value().encode()).digest()
    return LocalObjectStore(settings.data_path / "objects", key, settings.public_base_url)


def build_backends(settings: Settings, store: ObjectStore) -> Backends:
    if settings.backend == "sagemaker":
        return build_sagemaker_backends(settings, store)
    return build_local_backends(settings, store)


@dataclass
class Services:
    sessionmaker: SessionFactory
    store: ObjectStore
    backends: Backends
    engine: Engine | None = None  # set when built here (and so disposed of here)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()


def build(settings: Settings, *, sessionmaker: SessionFactory | None = None, store: ObjectStore | None = None,
          backends: Backends | None = None, backends_factory: BackendsFactory | None = None) -> Services:
    """What settings name, except the parts given (tests give their own)."""
    settings.data_path.mkdir(parents=True, exist_ok=True)
    engine = None
    if sessionmaker is None:
        engine = make_engine(settings.resolved_database_url)
        sessionmaker = make_sessionmaker(engine)
    store = store if store is not None else build_store(settings)
    if backends is None:
        backends = (backends_factory or build_backends)(settings, store)
    return Services(sessionmaker, store, backends, engine)

