"""The per-job Redis lock, on redis-py's own :class:`redis.lock.Lock`.

redis-py gives the token per holder, the TTL, the owner-checked release and extend (Lua
scripts). We add only the key naming and a non-thread-local token, so the heartbeat
thread can extend the lock its stage took.
"""

from __future__ import annotations

from uuid import UUID

import redis
from redis.exceptions import LockError


class RedisJobLock:
    def __init__(self, client: redis.Redis, name: str, ttl: float):
        self.ttl = ttl
        self._lock = client.lock(name, timeout=ttl, blocking=False, thread_local=False)

    def acquire(self) -> bool:
        return bool(self._lock.acquire(blocking=False))

    def extend(self) -> bool:
        try:
            return bool(self._lock.reacquire())
        except LockError:  # LockNotOwnedError included: expired or another holder
            return False

    def release(self) -> bool:
        try:
            self._lock.release()
        except LockError:
            return False
        return True


class RedisLocks:
    """Makes the lock of a job (``<prefix><job_id>``, default ``job:lock:<job_id>``)."""

    def __init__(self, client: redis.Redis, *, prefix: str, ttl: float):
        self.client, self.prefix, self.ttl = client, prefix, ttl

    def key(self, job_id: UUID) -> str:
        return f"{self.prefix}{job_id}"

    def __call__(self, job_id: UUID) -> RedisJobLock:
        return RedisJobLock(self.client, self.key(job_id), self.ttl)

    def is_locked(self, job_id: UUID) -> bool:
        return bool(self.client.exists(self.key(job_id)))

    def force_release(self, job_id: UUID) -> None:
        self.client.delete(self.key(job_id))
