"""Write-behind writes the replicas acknowledged: ``WAIT`` after the write script.

A queued write lives only in Redis until the drain writes it. If the master dies before a
replica has it, the promoted replica never had it: the write is lost, though the caller
was told it was done. With the cache's ``replicas`` setting, each write (or batch) is
followed on the same connection, in the same round trip, by ``WAIT <replicas> <ms>``.
When fewer replicas acknowledged, the write is not trusted to survive a failover: it goes
straight to the store too, as during an outage, and then is settled
(:mod:`taskguard.cache.settling`). The caller is answered only after one of the two
holds the write.

Redis Cluster is refused: a batch spans partitions owned by different masters, and
``WAIT`` counts the replicas of the one master its connection talks to, which a pipeline
through ``RedisCluster`` does not pin (docs/outages.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from taskguard.backend.lua import Script
from taskguard.backend.topology import is_cluster, parse_target
from taskguard.errors import ConfigurationError

from . import outage
from .config import CacheConfig

__all__ = [
    "acked_count",
    "check_replication",
    "on_cluster",
    "send_then_wait",
    "warn_unreplicated",
]


def on_cluster(url: str, client: object) -> bool:
    """True when a backend of ``url`` (or its client) talks to a Redis Cluster.

    The URL is read first, so a cluster client is not built (it connects as it is made)
    just to ask; a plain or Sentinel client is built lazily and does not connect.
    """
    try:
        if parse_target(url).topology == "cluster":
            return True
    except ValueError:
        pass
    return is_cluster(client() if callable(client) else client)


def check_replication(config: CacheConfig, *, cluster: bool, socket_timeout: float | None) -> None:
    """Raise :class:`ConfigurationError` when ``config.replicas`` cannot be honoured: on
    a Redis Cluster, or with a ``replica_timeout`` the backend's socket timeout would
    cut short (a ``WAIT`` that outlives it reads as an outage)."""
    if not config.replicas:
        return
    if cluster:
        raise ConfigurationError(
            "WAIT after write-behind writes is not supported on Redis Cluster (a batch "
            "spans masters; see docs/outages.md): use replicas=0 there",
            field="replicas",
        )
    if socket_timeout is not None and config.replica_timeout >= socket_timeout:
        raise ConfigurationError(
            f"must be below the backend's socket_timeout ({socket_timeout} s), got "
            f"{config.replica_timeout} s",
            field="replica_timeout",
        )


def send_then_wait(
    client: redis.Redis,
    script: Script,
    calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
    replicas: int,
    timeout_ms: int,
) -> tuple[list[Any], int]:
    """Pipeline ``script`` once per ``(keys, args)``, then ``WAIT replicas timeout_ms``,
    in one round trip on one connection.

    Returns:
        The scripts' replies (errors as exceptions, as ``execute(raise_on_error=False)``
        gives them) and how many replicas acknowledged every write before the ``WAIT``.

    Raises:
        redis.RedisError: The ``WAIT`` itself failed (a lost connection raises anyway).
    """
    pipe = client.pipeline(transaction=False)
    for keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    pipe.wait(replicas, timeout_ms)
    *replies, acked = pipe.execute(raise_on_error=False)
    return replies, acked_count(acked)


def acked_count(reply: Any) -> int:
    """The replica count of a ``WAIT`` reply; an error reply is raised."""
    if isinstance(reply, Exception):
        raise reply
    return int(reply)


def warn_unreplicated(config: CacheConfig, writes: int, acked: int) -> None:
    """Log (rate-limited, like the outage path) that ``writes`` queued writes reached only
    ``acked`` of ``config.replicas`` replicas and go straight to the store."""
    outage.warn(
        "cache %s: %d replica(s) of %d acknowledged within %.3f s; writing %d record(s) "
        "straight to the store too",
        config.namespace,
        acked,
        config.replicas,
        config.replica_timeout,
        writes,
    )
