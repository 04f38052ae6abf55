"""Login throttling (app/auth/ratelimit.py): slows the guesser, never locks the owner out."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.auth import ratelimit
from app.auth.ratelimit import LoginThrottle
from app.errors import RateLimited
from tests.conftest import assert_error


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(ratelimit.time, "monotonic", c)
    return c


def test_back_off_doubles_per_address_and_account(clock: Clock) -> None:
    t = LoginThrottle(max_failures=3, window_seconds=300, max_concurrent=1)
    for _ in range(3):
        t.check("6.6.6.6", "carol")
        t.failed("6.6.6.6", " CAROL ")  # another spelling is the same account
    with pytest.raises(RateLimited) as e:
        t.check("6.6.6.6", "carol")
    assert e.value.headers == {"Retry-After": "1"}
    t.check("10.0.0.1", "carol")  # the owner, elsewhere, goes ahead
    t.check("6.6.6.6", "dave")  # and so does another account from the attacker's address (for now)
    clock.now += 1
    t.check("6.6.6.6", "carol")
    t.failed("6.6.6.6", "carol")  # 4th failure: 2 s
    assert t.wait_seconds("6.6.6.6", "carol") == pytest.approx(2)
    clock.now += 2
    t.failed("6.6.6.6", "carol")  # 5th: 4 s
    assert t.wait_seconds("6.6.6.6", "carol") == pytest.approx(4)
    clock.now += 301  # a quiet window forgets
    t.check("6.6.6.6", "carol")


def test_an_address_guessing_many_accounts_is_slowed_too(clock: Clock) -> None:
    t = LoginThrottle(max_failures=2, window_seconds=300, max_concurrent=1)
    for i in range(2 * ratelimit.SPRAY_FACTOR):
        t.failed("6.6.6.6", f"user{i}")
    assert t.wait_seconds("6.6.6.6", "someone-new") > 0
    assert t.wait_seconds("10.0.0.1", "someone-new") == 0


def test_a_success_clears_the_count(clock: Clock) -> None:
    t = LoginThrottle(max_failures=2, window_seconds=300, max_concurrent=1)
    t.failed("1.1.1.1", "erin")
    t.succeeded("1.1.1.1", "Erin")
    t.failed("1.1.1.1", "erin")
    t.check("1.1.1.1", "erin")


def test_the_owner_logs_in_while_an_attacker_is_throttled(app: Any, client: TestClient, register: Any) -> None:
    register("carol")
    attacker = TestClient(app, client=("203.0.113.9", 5000), raise_server_exceptions=False)
    for _ in range(5):
        r = attacker.post("/api/auth/token", data={"username": " CAROL ", "password": "wrong password!"})
        assert r.status_code == 401
    assert_error(attacker.post("/api/auth/token", data={"username": "carol", "password": "x"}), 429,
                 "too_many_login_attempts", "username")
    owner = TestClient(app, client=("198.51.100.7", 6000), raise_server_exceptions=False)
    r = owner.post("/api/auth/token", data={"username": " Carol ", "password": "correct horse battery"})
    assert r.status_code == 200, r.text


def test_usernames_are_normalised_at_registration(client: TestClient) -> None:
    r = client.post("/api/auth/register", json={"username": "  Zed ", "email": "zed@example.com",
                                                "password": "correct horse battery"})
    assert r.status_code == 201 and r.json()["username"] == "zed"
    r = client.post("/api/auth/register", json={"username": "ZED", "email": "zed2@example.com",
                                                "password": "correct horse battery"})
    assert_error(r, 409, "username_taken")
