"""Leases (app/leases.py): one owner at a time, renewal, expiry, fencing - on each database."""

from __future__ import annotations

import threading
import time

import pytest

from app import leases


def test_one_owner_at_a_time_and_expiry(session_factory):
    with session_factory() as s:
        assert leases.claim(s, "training_job", "j1", "a", 60)
        assert not leases.claim(s, "training_job", "j1", "b", 60)  # a's lease is live
        assert leases.claim(s, "training_job", "j1", "a", 60)  # a renews its own
        assert leases.claim(s, "training_job", "j2", "b", 60)  # another resource is free
        assert leases.claim(s, "endpoint", "j1", "b", 60)  # and so is another type with the same id
        assert leases.claim(s, "evaluation", "e1", "a", 0.01)
        time.sleep(0.05)
        assert leases.claim(s, "evaluation", "e1", "b", 60)  # a's lease expired: b takes over
        with pytest.raises(leases.LeaseLost):  # a's writes are fenced off from then on
            leases.still_held(s, "evaluation", "e1", "a", 60)
        s.rollback()
        leases.still_held(s, "evaluation", "e1", "b", 60)
        leases.release(s, "training_job", "j1", "a")
        assert leases.claim(s, "training_job", "j1", "b", 60)


def test_concurrent_claims_have_one_winner(engine, db_url):
    """Separate connections (one per thread) racing for the same lease: exactly one wins."""
    from sqlalchemy.orm import sessionmaker

    make = sessionmaker(bind=engine)
    rid = f"race-{time.monotonic_ns()}"
    wins: list[str] = []
    barrier = threading.Barrier(8)

    def race(owner: str) -> None:
        with make() as s:
            barrier.wait()
            if leases.claim(s, "training_job", rid, owner, 60):
                wins.append(owner)

    threads = [threading.Thread(target=race, args=(f"w{i}",)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(wins) == 1, wins
    with make() as s:
        leases.release(s, "training_job", rid, wins[0])
