"""What a contract test gets from the ``contract`` fixture (see conftest.py): a backend
under test, and the one way time passes on it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import redis
import redis.cluster

import taskguard

#: Runs a test on Redis only: TTLs of real keys, Lua scripts, pub/sub, real time (on every
#: Redis topology its module runs on; see ``TOPOLOGIES``).
REDIS_ONLY = pytest.mark.redis_only

#: Runs a module (``pytestmark = TOPOLOGIES``) on Redis Cluster and Sentinel too, besides
#: memory and one Redis server. Only a chosen few modules do: each topology's servers start
#: once per session, but every test run on them costs CI time.
TOPOLOGIES = pytest.mark.topologies("cluster", "sentinel")
#: Runs a module on Redis Cluster too: what only the cluster can break (slots, routing,
#: per-node scripts, sharded pub/sub); the Sentinel topology changes only how the one
#: master is found, which the TOPOLOGIES modules prove.
CLUSTER_TOO = pytest.mark.topologies("cluster")
#: Runs a module on Redis Cluster and Sentinel only (what one server cannot show).
TOPOLOGIES_ONLY = pytest.mark.topologies("cluster", "sentinel", only=True)


def real_time(seconds: float) -> None:
    """Let ``seconds`` of real time pass: Redis takes time from its own ``TIME``, which no
    test can move, so on Redis the passing of time under test is real."""
    time.sleep(seconds)


@dataclass
class Contract:
    """One backend under test.

    Attributes:
        kind: ``"memory"``, ``"redis"`` (one server), ``"cluster"`` (Redis Cluster) or
            ``"sentinel"`` (a master found through Sentinel).
        backend: The backend, with its own key prefix.
        elapse: Moves the backend's time forward: the fake clock on memory (at once),
            real time on Redis. So durations stay short, and the Redis half asserts
            bounds rather than exact values.
        client: A plain client on the Redis server (a ``RedisCluster`` on a cluster), to
            inspect keys and TTLs; ``None`` on memory.
        url: The Redis URL; ``None`` on memory.
    """

    kind: str
    backend: taskguard.Backend
    elapse: Callable[[float], None]
    client: redis.Redis | None = None
    url: str | None = None

    @property
    def prefix(self) -> str:
        return self.backend.keys.prefix

    def blocked_waiters(self) -> int:
        """How many threads wait in ``backend.wait_for_wakeup`` right now."""
        if self.client is None:
            # The memory backend's waiters block on one Condition (CPython keeps them in
            # ``_waiters``); there is no public count.
            return len(self.backend._woken._waiters)  # type: ignore[attr-defined]
        # The contract's Redis connections are named after the prefix (CLIENT SETNAME), so
        # other clients of a shared server are not counted; flag ``b``: blocked (BLPOP).
        if isinstance(self.client, redis.cluster.RedisCluster):
            per_node = self.client.client_list(target_nodes=redis.cluster.RedisCluster.PRIMARIES)
            infos = [info for found in per_node.values() for info in found]
        else:
            infos = self.client.client_list()
        return sum(
            1 for info in infos if info.get("name") == self.prefix and "b" in info.get("flags", "")
        )
