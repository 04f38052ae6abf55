"""SQLite as an embedded database under concurrent writers (app/db.py): a transaction that reads
and then writes waits for the write lock instead of failing with `database is locked`."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import text

from app.db import make_engine


def test_read_then_write_transactions_in_parallel_all_succeed(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, seen INTEGER)"))
    errors: list[str] = []
    barrier = threading.Barrier(20)

    def work() -> None:
        barrier.wait()
        try:
            for _ in range(10):
                with engine.begin() as conn:  # the shape of a create: look, then insert
                    seen = conn.execute(text("SELECT count(*) FROM t")).scalar()
                    conn.execute(text("INSERT INTO t (seen) VALUES (:seen)"), {"seen": seen})
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(repr(e))

    threads = [threading.Thread(target=work) for _ in range(20)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 200
    engine.dispose()


def test_savepoints_and_ddl_keep_their_transaction(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
    conn = engine.connect()
    trans = conn.begin()
    conn.execute(text("SELECT 1"))
    nested = conn.begin_nested()
    conn.execute(text("INSERT INTO t (id) VALUES (1)"))
    nested.commit()
    trans.rollback()  # the outer transaction (a test's) still rolls everything back
    assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 0
    conn.close()
    engine.dispose()
