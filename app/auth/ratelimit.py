"""Failed-login throttle per username (per API process) and a cap on concurrent hashing."""

from __future__ import annotations

import asyncio
import time
from collections import deque

from app.errors import RateLimited


class LoginThrottle:
    def __init__(self, max_failures: int, window_seconds: int, max_concurrent: int) -> None:
        self.max_failures = max_failures
        self.window = window_seconds
        self._failures: dict[str, deque[float]] = {}
        self.slots = asyncio.Semaphore(max_concurrent)

    def _recent(self, username: str) -> deque[float]:
        q = self._failures.setdefault(username, deque())
        cutoff = time.monotonic() - self.window
        while q and q[0] < cutoff:
            q.popleft()
        return q

    def check(self, username: str) -> None:
        q = self._recent(username)
        if len(q) >= self.max_failures:
            retry = max(1, int(q[0] + self.window - time.monotonic()))
            raise RateLimited(
                f"Too many failed logins for this username; try again in {retry} s",
                code="too_many_login_attempts", param="username", headers={"Retry-After": str(retry)},
            )

    def failed(self, username: str) -> None:
        self._recent(username).append(time.monotonic())
        if len(self._failures) > 100_000:  # bound memory under a username-spraying attack
            self._failures.pop(next(iter(self._failures)))

    def succeeded(self, username: str) -> None:
        self._failures.pop(username, None)
