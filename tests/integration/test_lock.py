"""The per-job lock on real Redis: one holder at a time, a TTL, renewal, and release or
renewal only by the holder whose token it is (redis-py's Lock underneath)."""

from __future__ import annotations

import time
import uuid

import redis

from tasks.lock import RedisLocks
from tests.support.processes import wait_for


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
    factory, job_id = locks(redis_url, ttl=0.6), uuid.uuid4()
    holder = factory(job_id)
    assert holder.acquire()
    deadline = time.monotonic() + 1.5  # 2.5 × the TTL
    while time.monotonic() < deadline:
        assert holder.extend()
        time.sleep(0.2)  # the heartbeat's rhythm: a third of the TTL
    assert factory.is_locked(job_id)
    assert holder.release()
