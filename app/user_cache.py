"""What a polled read gave for one user, kept in this process while the user's data stays the same.

Every committed write to a user's jobs, endpoints (and their adapters), evaluations, events or usage
days moves `users.data_version` on, in the same transaction (database triggers, migration 0009). The
users row is read on every authenticated request (app/auth/lookup.py), so a route knows the version
its request started from at no cost. An entry stored under version v was read after a lookup that
saw v, so it is at least as new as v: a request that sees v may be answered from it without reading
anything, and a request that starts after a write has committed sees the new version and misses.
This holds across API processes and workers, whatever wrote the row.

A dashboard polling a user whose jobs are idle then costs the user lookup; a running job's
progress moves the version at each update, and the next poll reads again. What also moves with the
clock, a live endpoint's cost, is computed at each request from the cached rows (the endpoint
reads), or kept for the current second only (`get_at`: the usage report, whose computation costs as
much as its reads). Entries are bounded by their total size, least recently used first out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from app.auth.models import User


class UserCache:
    MAX_BYTES = 32 * 1024 * 1024

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, Hashable], tuple[int, Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, user: User, key: Hashable) -> Any | None:
        """What was stored for `key` under the version `user` was read at, or None."""
        with self._lock:
            hit = self._entries.get((user.id, key))
            if hit is None or hit[0] != user.data_version:
                return None
            self._entries.move_to_end((user.id, key))
            return hit[1]

    def put(self, user: User, key: Hashable, value: Any) -> None:
        """Store `value`, read after `user`'s row was (an entry already stored under a newer version
        stays)."""
        k = (user.id, key)
        size = sizeof(k) + sizeof(value)
        with self._lock:
            old = self._entries.pop(k, None)
            if old is not None:
                self._bytes -= old[2]
                if old[0] > user.data_version:
                    self._entries[k] = old
                    self._bytes += old[2]
                    return
            self._entries[k] = (user.data_version, value, size)
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                self._bytes -= self._entries.popitem(last=False)[1][2]

    def get_at(self, user: User, key: Hashable, as_of: Hashable) -> Any | None:
        """The same, for a value that also depends on something the version does not follow (the
        clock's second, say): only what was stored with an equal `as_of`."""
        hit = self.get(user, key)
        return hit[1] if hit is not None and hit[0] == as_of else None

    def put_at(self, user: User, key: Hashable, as_of: Hashable, value: Any) -> None:
        self.put(user, key, (as_of, value))


def sizeof(value: Any) -> int:
    """Roughly the memory `value` holds, in bytes: strings by their length, containers by their
    items, anything else as a small object. (What bounds the cache: keys count, and a user can vary
    a page's parameters as much as they like.)"""
    if isinstance(value, str | bytes):
        return 49 + len(value)
    if isinstance(value, dict):
        return 64 + sum(sizeof(k) + sizeof(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return 56 + sum(map(sizeof, value))
    return 32


cache = UserCache()
