"""The per-job lock on real Redis: one holder at a time, a TTL, renewal, and release or
renewal only by the holder whose token it is (redis-py's Lock underneath)."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from tasks.lock import RedisLocks
from tests.support.processes import wait_for

pytestmark = pytest.mark.integration


def locks(redis_url: str, ttl: float = 5) -> RedisLocks:
    return RedisLocks(redis.Redis.from_url(redis_url), prefix=f"t-{uuid.uuid4().hex[:6]}:",
                      ttl=ttl)


def test_one_holder_at_a_time_and_the_key_is_named_after_the_job(redis_url):
    factory, job_id = locks(redis_url), uuid.uuid4()
    first, second = factory(job_id), factory(job_id)
    assert first.acquire()
    assert not second.acquire()  # non-blocking: busy means "someone else runs it"
    assert factory.is_locked(job_id)
    assert factory.client.exists(f"{factory.prefix}{job_id}")
    assert first.release()
    assert second.acquire()
    second.release()


def test_an_expired_holder_can_neither_release_nor_renew_the_new_holders_lock(redis_url):
    factory, job_id = locks(redis_url, ttl=0.5), uuid.uuid4()
    old = factory(job_id)
    assert old.acquire()
    wait_for(lambda: not factory.is_locked(job_id), 5, "the lock to expire")
    new = factory(job_id)
    assert new.acquire()
    assert not old.extend()
    assert not old.release()
    assert factory.is_locked(job_id)  # still the new holder's
    assert new.release()


def test_renewal_keeps_the_lock_past_its_ttl(redis_url):
    ttl = 2.0
    factory, job_id = locks(redis_url, ttl=ttl), uuid.uuid4()
    key = factory.key(job_id)
    holder = factory(job_id)
    assert holder.acquire()
    acquired = time.monotonic()
    renewals: list[tuple[int, int]] = []

    # The heartbeat's rhythm: renew once a third of the TTL is gone (by Redis's own clock
    # of the key), until the lock has been held for 2.5 TTLs
    def held_long_enough() -> bool:
        left = factory.client.pttl(key)
        if left <= ttl * 1000 * 2 / 3:
            assert holder.extend(), left
            renewals.append((left, factory.client.pttl(key)))
        return time.monotonic() - acquired > 2.5 * ttl

    wait_for(held_long_enough, 2.5 * ttl + 30, "2.5 lock TTLs to pass")
    # Then each renewal started the TTL over, and the lock is still held
    assert len(renewals) >= 3
    assert all(after > before for before, after in renewals), renewals
    assert factory.is_locked(job_id)
    assert holder.release()
