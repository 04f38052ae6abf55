"""Failed-login throttling and a cap on concurrent password hashing (per API process).

Failures are counted per (client address, account) and per client address alone. After
`max_failures` from one address for one account, each further attempt from that address must wait
twice as long as the one before (1 s, 2 s, 4 s ... up to `max_delay_seconds`); an address that
fails against many accounts is slowed the same way after ten times as many. The account itself is
never locked: its owner, logging in from another address, is not slowed by someone guessing its
password elsewhere. A success clears its (address, account) count; counts are forgotten after
`window_seconds` without a failure.
"""

from __future__ import annotations

import asyncio
import math
import time

from app.errors import RateLimited

ANY_ACCOUNT = ""
SPRAY_FACTOR = 10  # failures one address may make across accounts, in units of max_failures
MAX_TRACKED = 100_000  # keys kept (bounds memory under an attack from many addresses)


def normalise_username(username: str) -> str:
    """One spelling per account: surrounding spaces and case do not make another name."""
    return username.strip().casefold()


class LoginThrottle:
    def __init__(self, max_failures: int, window_seconds: int, max_concurrent: int,
                 max_delay_seconds: float = 900.0) -> None:
        self.max_failures = max_failures
        self.window = window_seconds
        self.max_delay = max_delay_seconds
        self._failures: dict[tuple[str, str], tuple[int, float]] = {}  # key -> (count, last failure)
        self.slots = asyncio.Semaphore(max_concurrent)

    def _keys(self, address: str, username: str) -> list[tuple[tuple[str, str], int]]:
        return [((address, normalise_username(username)), self.max_failures),
                ((address, ANY_ACCOUNT), self.max_failures * SPRAY_FACTOR)]

    def wait_seconds(self, address: str, username: str) -> float:
        """How long this address must still wait before trying this account again (0: go ahead)."""
        now, wait = time.monotonic(), 0.0
        for key, limit in self._keys(address, username):
            count, last = self._failures.get(key, (0, 0.0))
            if count and now - last > self.window:
                self._failures.pop(key, None)
                continue
            if count >= limit:
                delay = min(self.max_delay, 2.0 ** (count - limit))
                wait = max(wait, last + delay - now)
        return wait

    def check(self, address: str, username: str) -> None:
        wait = self.wait_seconds(address, username)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise RateLimited(
                f"Too many failed logins from this address for this username; try again in {retry} s",
                code="too_many_login_attempts", param="username", headers={"Retry-After": str(retry)},
            )

    def failed(self, address: str, username: str) -> None:
        now = time.monotonic()
        for key, _ in self._keys(address, username):
            count, _last = self._failures.get(key, (0, 0.0))
            self._failures[key] = (count + 1, now)
        while len(self._failures) > MAX_TRACKED:
            self._failures.pop(next(iter(self._failures)))

    def succeeded(self, address: str, username: str) -> None:
        self._failures.pop((address, normalise_username(username)), None)
