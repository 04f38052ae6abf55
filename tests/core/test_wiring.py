"""The composition root: what settings name, built once for the API and the worker alike."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from app import wiring
from app.config import WorkerSettings
from app.storage.local import LocalObjectStore
from tests.settings import make_test_settings


def test_build_from_settings(tmp_path: Path) -> None:
    settings = make_test_settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'w.db'}",
                                  worker=WorkerSettings(enabled=False))
    services = wiring.build(settings)
    try:
        assert isinstance(services.store, LocalObjectStore)
        assert services.backends.name == "local"
        with services.sessionmaker() as session:
            assert session.execute(text("SELECT 1")).scalar() == 1
    finally:
        services.close()

