"""The per-job Redis lock, on redis-py's own :class:`redis.lock.Lock`.

redis-py gives the token per holder, the TTL, the owner-checked release and extend (Lua
scripts). We add only the key naming, a non-thread-local token, so the heartbeat thread
can extend the lock its stage took, and a token that says which process took the lock
(``host:pid:random``), so an operator can tell who holds a lock even when that process no
longer answers (frozen, cut off from the broker, killed).
"""

from __future__ import annotations

import os
import socket
from uuid import UUID, uuid4

import redis
from redis.exceptions import LockError

_HOST = socket.gethostname()


def new_token() -> str:
    """A lock token unique to one acquisition, naming the process that took it."""
    return f"{_HOST}:{os.getpid()}:{uuid4().hex}"


def token_process(token: bytes | str | None) -> tuple[str, int] | None:
    """(host, pid) of the process that took a lock with this token; None for a token of
    another form (a lock set by something else than a worker)."""
    if token is None:
        return None
    text = token.decode(errors="replace") if isinstance(token, bytes) else token
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or len(parts[2]) != 32:
        return None
    return parts[0], int(parts[1])


#: The errors that mean "Redis, where the locks are, is unavailable for now".
LOCKS_UNAVAILABLE: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)


class RedisJobLock:
    def __init__(self, client: redis.Redis, name: str, ttl: float):
        self.ttl = ttl
        self._lock = client.lock(name, timeout=ttl, blocking=False, thread_local=False)

    def acquire(self) -> bool:
        return bool(self._lock.acquire(blocking=False, token=new_token()))

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
