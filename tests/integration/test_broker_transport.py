"""The Redis broker transport (tasks/transport.py): one Redis client per channel, on a real
Redis, wire-compatible with kombu's own transport; other brokers keep kombu's."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection, Exchange, Queue

from orchestrator.settings import Settings
from tasks.chain import create_sender_app
from tasks.factory import create_celery_app
from tasks.transport import TRANSPORT, Channel, Transport, transport_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("url, expected", [
    ("redis://127.0.0.1:6379/0", TRANSPORT),
    ("redis://:secret@redis.internal:6380/3", TRANSPORT),
    ("rediss://redis.internal:6380/0", None),
    ("sentinel://127.0.0.1:26379", None),
    ("amqp://guest:guest@127.0.0.1:5672//", None),
    (None, None),
])
def test_only_a_plain_redis_broker_gets_the_transport(url: str | None,
                                                      expected: str | None) -> None:
    assert transport_for(url) == expected


def test_the_worker_and_the_api_publish_through_it(settings: Settings) -> None:
    for app in (create_celery_app(settings), create_sender_app(settings)):
        with app.connection_for_write() as connection:
            assert isinstance(connection.transport, Transport)
            assert isinstance(connection.default_channel, Channel)


def test_a_rabbitmq_worker_keeps_kombus_transport(settings: Settings) -> None:
    amqp = Settings.from_env({"DATABASE_URL": settings.database_url,
                              "REDIS_URL": settings.redis_url,
                              "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"})
    for app in (create_celery_app(amqp), create_sender_app(amqp)):
        assert app.conf.broker_transport is None
        with app.connection_for_write() as connection:
            assert connection.transport_cls == "amqp"


@pytest.fixture
def channel(redis_url: str) -> Iterator[Channel]:
    with Connection(redis_url, transport=TRANSPORT) as connection:
        yield connection.default_channel


def test_every_command_of_a_channel_shares_one_client(channel: Channel) -> None:
    first = channel._create_client()
    seen: list[redis.Redis] = []
    threads = [threading.Thread(target=lambda: seen.append(channel._create_client()))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(client is first for client in seen)
    assert first.connection_pool is channel.pool
    assert first.ping()
    # The event loop's BRPOP client is kombu's own, on its own pool
    assert channel._create_client(asynchronous=True) is not first


def test_a_new_pool_gets_a_new_client(channel: Channel) -> None:
    """Kombu drops its pools on a disconnect (and after a fork): a client on the old pool
    would talk through connections kombu has let go."""
    before = channel._create_client()
    channel._disconnect_pools()
    after = channel._create_client()
    assert after is not before
    assert after.connection_pool is channel.pool
    assert after.ping()


def test_messages_cross_between_it_and_kombus_own_transport(redis_url: str) -> None:
    """Same keys, same wire format: a worker on this transport and a process on the stock
    one (an older API during a rolling upgrade, Flower) share queues and unacked messages."""
    name = f"transport-test-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    try:
        for sender, receiver in ((TRANSPORT, None), (None, TRANSPORT)):
            with Connection(redis_url, transport=sender) as connection:
                connection.Producer().publish({"from": str(sender)}, exchange=queue.exchange,
                                              routing_key=name, declare=[queue],
                                              serializer="json")
            with Connection(redis_url, transport=receiver) as connection:
                message = queue(connection.default_channel).get(no_ack=False)
                assert message is not None
                assert message.payload == {"from": str(sender)}
                unacked = connection.default_channel.unacked_key
                assert redis.Redis.from_url(redis_url).hlen(unacked) >= 1
                message.ack()
    finally:
        with Connection(redis_url) as connection:
            queue(connection.default_channel).delete()
