"""Kombu's Redis transport, with one Redis client per channel instead of one per command.

Kombu's Redis channel builds a new ``redis.Redis`` object around its connection pool for
every publish and every unacked-message bookkeeping step (``Channel._create_client``,
through ``conn_or_acquire`` and ``QoS.pipe_or_acquire``): three per stage task (the
delivery's ``QoS.append``, its ack, the next stage's publish), and once more for each
job the API starts. redis-py 8 fills a fresh client's table of response callbacks every
time: about 0.2 ms of CPU each on the 2-core benchmark machine, under the GIL the whole
worker shares, for a client that holds no connection of its own.

A ``redis.Redis`` over a connection pool is safe to share between threads (each command
takes a connection from the pool and gives it back; pipelines are still made per use),
so :class:`Channel` keeps one and makes a new one only when the channel's pool is
replaced (kombu drops its pools on a disconnect or after a fork). The asynchronous client
(the BRPOP in the event loop) is kombu's own, as before. Everything else, wire format
and keys included, is kombu's: a worker on this transport and a process on the stock
one share queues and unacked messages.

Used for ``redis://`` brokers (:func:`transport_for`); ``rediss://`` and sentinel URLs
keep kombu's own transport, whose TLS and failover handling starts from the URL scheme.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool  # kombu makes it on first use, and anew after a disconnect
        client = self._sync_client
        if client is None or client.connection_pool is not pool:
            # Two threads may both build one here at first: either does, neither leaks
            client = self._sync_client = self.Client(connection_pool=pool)
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel


#: What Celery's ``broker_transport`` takes for this transport.
TRANSPORT = f"{__name__}:Transport"


def transport_for(broker_url: str | None) -> str | None:
    """The ``broker_transport`` setting for ``broker_url``: this module's transport for a
    plain ``redis://`` broker, None (the URL's scheme decides) for any other."""
    if broker_url and urlsplit(broker_url).scheme == "redis":
        return TRANSPORT
    return None
