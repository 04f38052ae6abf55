"""Idempotency-Key claimed atomically (app/idempotency.py): of concurrent requests with one key,
one does the work and the others get its answer."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from sqlalchemy.orm import sessionmaker

from app import idempotency
from app.auth.models import User
from app.errors import Conflict


def _user(make: Any) -> User:
    with make() as s:
        user = User(username=f"idem-{uuid.uuid4().hex[:8]}", email=f"{uuid.uuid4().hex}@x.io", password_hash="x")
        s.add(user)
        s.commit()
    return user


def test_concurrent_requests_with_one_key_do_the_work_once(engine: Any) -> None:
    make = sessionmaker(bind=engine, expire_on_commit=False)
    user = _user(make)
    key, h = f"k-{uuid.uuid4().hex}", idempotency.body_hash({"a": 1})
    answers: list[Any] = []
    work_done = []
    barrier = threading.Barrier(6)

    def request() -> None:
        with make() as s:
            barrier.wait()
            prior = idempotency.lookup(s, user.id, "POST /x", key, h, wait_seconds=10)
            if prior is None:
                work_done.append(1)
                time.sleep(0.3)  # the work takes a while; the others wait for its answer
                idempotency.remember(s, user.id, "POST /x", key, h, 201, {"id": "first"})
                s.commit()
                answers.append({"id": "first"})
            else:
                answers.append(prior.response)

    threads = [threading.Thread(target=request) for _ in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(work_done) == 1 and answers == [{"id": "first"}] * 6
    with make() as s, pytest.raises(Conflict) as e:
        idempotency.lookup(s, user.id, "POST /x", key, idempotency.body_hash({"a": 2}))
    assert e.value.code == "idempotency_key_reused"


def test_a_failed_request_gives_its_key_back(engine: Any) -> None:
    make = sessionmaker(bind=engine, expire_on_commit=False)
    user = _user(make)
    with make() as s:
        key, h = f"k-{uuid.uuid4().hex}", idempotency.body_hash({"a": 1})
        assert idempotency.lookup(s, user.id, "POST /x", key, h) is None
        with make() as other, pytest.raises(Conflict) as e:  # in progress: retry shortly
            idempotency.lookup(other, user.id, "POST /x", key, h)
        assert e.value.code == "idempotency_key_in_progress"
        idempotency.abandon_unfinished(s)  # the request failed
        with make() as other:
            assert idempotency.lookup(other, user.id, "POST /x", key, idempotency.body_hash({"a": 2})) is None
