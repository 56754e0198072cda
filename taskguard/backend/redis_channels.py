"""Pub/sub of the Redis backend on every topology, and which topology that is.

A mixin of :class:`~taskguard.backend.redis.RedisBackend`, apart so that module stays
readable: on Redis Cluster of Redis >= 7 channels are sharded (``SPUBLISH`` /
``SSUBSCRIBE`` on the node of the channel's slot); elsewhere plain ``PUBLISH`` /
``SUBSCRIBE`` serve.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import redis

from taskguard.errors import TaskGuardError
from taskguard.keys import KeySchema

from .topology import is_cluster, parse_target

__all__ = ["MESSAGE_TYPES", "RedisChannels"]

#: The types of a pub/sub message delivered to a subscriber (not a confirmation).
MESSAGE_TYPES = frozenset({"message", "smessage"})


class RedisChannels:
    """The topology and the pub/sub port of :class:`RedisBackend` (a mixin)."""

    keys: KeySchema
    url: str
    _given_client: redis.Redis | None

    if TYPE_CHECKING:

        @property
        def client(self) -> redis.Redis: ...

        def commands(self, what: str) -> AbstractContextManager[redis.Redis]: ...

    @functools.cached_property
    def topology(self) -> str:
        """``"single"``, ``"cluster"`` or ``"sentinel"``: what :attr:`url` names."""
        if self._given_client is not None and is_cluster(self._given_client):
            return "cluster"
        return parse_target(self.url).topology

    @functools.cached_property
    def sharded_pubsub(self) -> bool:
        """True on a Redis Cluster of Redis >= 7: channels are then sharded (``SPUBLISH``
        and ``SSUBSCRIBE``: only the node of the channel's slot, not every node)."""
        if self.topology != "cluster":
            return False
        try:
            with self.commands("INFO server"):
                info = self.client.info("server")
        except TaskGuardError:
            return True  # not known now: assume a current Redis (7.0 came out in 2022)
        found = info.get("redis_version") or next(
            (v.get("redis_version") for v in info.values() if isinstance(v, dict)), "0"
        )
        return int(str(found).split(".")[0]) >= 7

    def publish(self, channel: str, message: str, *, what: str = "PUBLISH") -> int:
        """Publish ``message`` on ``channel``; returns how many subscribers got it.

        ``SPUBLISH`` when :attr:`sharded_pubsub`, else ``PUBLISH``."""
        sharded = self.sharded_pubsub
        with self.commands(what) as client:
            if sharded:
                return int(client.spublish(channel, message))
            return int(client.publish(channel, message))

    def pubsub(self, channel: str | None = None) -> redis.client.PubSub:
        """A new pub/sub connection (subscription confirmations are not delivered).

        On Redis Cluster it is a connection to the node that owns ``channel``'s slot:
        that node gets every ``SPUBLISH`` to it, and every node gets a ``PUBLISH``.
        Subscribe with :meth:`subscribe`, which picks ``SSUBSCRIBE`` or ``SUBSCRIBE``.
        """
        with self.commands("pub/sub connection") as client:
            if self.topology != "cluster":
                return client.pubsub(ignore_subscribe_messages=True)
            if channel is None:
                raise ValueError("on Redis Cluster, pubsub() needs the channel")
            cluster: Any = client
            node: redis.Redis = cluster.get_redis_connection(cluster.get_node_from_key(channel))
            return node.pubsub(ignore_subscribe_messages=True)

    def subscribe(self, pubsub: redis.client.PubSub, channel: str) -> None:
        """Subscribe ``pubsub`` (from :meth:`pubsub`) to ``channel``: ``SSUBSCRIBE`` when
        :attr:`sharded_pubsub`, else ``SUBSCRIBE``. Its messages have the type
        ``"smessage"`` or ``"message"`` (see :data:`MESSAGE_TYPES`)."""
        if self.sharded_pubsub:
            pubsub.ssubscribe(channel)
        else:
            pubsub.subscribe(channel)

    def breaker_channel(self) -> str:
        """The channel the hot-path breakers of this prefix announce state changes on
        (:meth:`KeySchema.breaker_events`). With sharded pub/sub, a script ``SPUBLISH``-es
        to it, so it carries the breakers' hash tag (their keys' slot)."""
        return self.keys.breaker_events(sharded=self.sharded_pubsub)

    def publish_command(self) -> str:
        """``"SPUBLISH"`` or ``"PUBLISH"``: what a script publishes with."""
        return "SPUBLISH" if self.sharded_pubsub else "PUBLISH"
