"""A dataset delete that fails half-way never leaves a row naming removed files."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from tests.e2e.conftest import qa_jsonl


def test_a_failed_delete_keeps_the_files_of_the_row_it_keeps(client: Any, register: Any, store: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    h = register("dora")
    ds = client.post("/api/datasets", headers=h, files={"file": ("qa.jsonl", qa_jsonl())}).json()["id"]
    files = [k for k in store.list("users/") if f"/datasets/{ds}/" in k]
    assert files

    real_commit = Session.commit

    def failing_commit(self: Session) -> None:
        if any(type(o).__name__ == "Dataset" for o in self.deleted):
            raise OperationalError("COMMIT", {}, Exception("database is locked"))
        real_commit(self)

    monkeypatch.setattr(Session, "commit", failing_commit)
    assert client.delete(f"/api/datasets/{ds}", headers=h).status_code >= 500
    monkeypatch.setattr(Session, "commit", real_commit)
    assert client.get(f"/api/datasets/{ds}", headers=h).status_code == 200  # the row is still there...
    assert all(store.exists(k) for k in files)  # ...and so are its files
    assert client.delete(f"/api/datasets/{ds}", headers=h).status_code == 204
    assert not any(store.exists(k) for k in files)
