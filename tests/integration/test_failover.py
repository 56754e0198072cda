"""Failovers under a running client: the master this test started is killed, its replica
is promoted (by the sentinels, or by the cluster's own election), and taskguard finds the
new master by itself.

What it proves (docs/outages.md, "Failover: Sentinel and Cluster"): while no master
answers, every decision is the outage policy's (``degraded``), never an exception; once
the new master takes writes, guards enforce again within 5 s; and a fencing token handed
out before the failover (and acknowledged by the replica, ``WAIT``) is exceeded by the
next one.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

import taskguard
from taskguard.testing import wait_until
from taskguard.testing.topologies import RedisCluster, RedisSentinel

#: The goal: guards enforce again within this many seconds of the new master.
RECOVERY_BOUND = 5.0


@pytest.fixture
def sentinel() -> Iterator[RedisSentinel]:
    """A topology this test owns: it kills the master."""
    with RedisSentinel() as topology:
        yield topology


def test_guards_follow_the_outage_policy_then_enforce_on_the_new_master(
    sentinel: RedisSentinel,
) -> None:
    client = taskguard.connect(sentinel.url, prefix=f"tgt-{uuid.uuid4().hex[:8]}")
    limiter = client.rate_limiter("api", "1/h", on_outage="deny")
    lock = client.lock("invoice", ttl=30, renew=False)
    assert limiter.try_acquire("before").allowed
    first = lock.try_acquire()
    assert first.allowed
    assert first.token is not None
    first.lease.release()  # type: ignore[union-attr]

    # The token's counter is on the replica before the master dies (what WAIT promises).
    # (Each WAIT blocks less than the backend's 0.5 s socket timeout.)
    def replicated() -> bool:
        with client.backend.commands("WAIT") as redis_client:  # type: ignore[attr-defined]
            return bool(redis_client.wait(1, 200) == 1)

    wait_until(replicated, timeout=10, message="the replica never acknowledged")

    old_port = sentinel.master.port
    sentinel.master.crash()
    degraded = 0
    deadline = time.monotonic() + 30
    promoted_at = None
    while time.monotonic() < deadline:
        if promoted_at is None and sentinel.master_port() != old_port:
            sentinel.wait_for_failover(old_port)  # until it takes writes
            promoted_at = time.monotonic()
        decision = limiter.try_acquire("during")  # only ever an outage, never a crash
        if not decision.degraded:
            break
        degraded += 1
        time.sleep(0.02)
    assert degraded > 0, "the master's death was never seen"
    assert promoted_at is not None, "decisions came back before the sentinels named a master"
    recovered_in = time.monotonic() - promoted_at
    assert recovered_in <= RECOVERY_BOUND, f"guards came back {recovered_in:.1f}s after"

    # Enforcing again, on state the replica had: the bucket spent before is still spent.
    assert not limiter.try_acquire("before").allowed
    again = limiter.try_acquire("fresh")
    assert again.allowed
    assert not again.degraded
    assert not limiter.try_acquire("fresh").allowed
    second = lock.try_acquire()
    assert second.allowed
    assert second.token is not None
    assert second.token > first.token
    second.lease.release()  # type: ignore[union-attr]
    client.close()


def test_a_cluster_master_failover_is_ridden_out() -> None:
    with RedisCluster(node_timeout_ms=1000) as cluster:
        client = taskguard.connect(cluster.url, prefix=f"tgt-{uuid.uuid4().hex[:8]}")
        routes: Any = client.backend.client  # type: ignore[attr-defined]
        # The victim: the master of the prefix's own slot (unkeyed guards: the lock). Keyed
        # buckets spread over the slots, so the limiter's are picked on the same master.
        owner = routes.get_node_from_key(client.keys.rate_limit("api"))

        def on_victim(prefix: str) -> str:
            return next(
                bucket
                for bucket in (f"{prefix}-{i}" for i in itertools.count())
                if routes.get_node_from_key(client.keys.rate_limit("api", bucket)).port
                == owner.port
            )

        before, during = on_victim("before"), on_victim("during")
        limiter = client.rate_limiter("api", "1/h", on_outage="deny")
        assert limiter.try_acquire(before).allowed
        lock = client.lock("invoice", ttl=30, renew=False)
        first = lock.try_acquire()
        assert first.token is not None
        first.lease.release()  # type: ignore[union-attr]

        def replicated() -> bool:
            with client.backend.commands("WAIT") as redis_client:  # type: ignore[attr-defined]
                return bool(redis_client.wait(1, 200, target_nodes=owner) == 1)

        wait_until(replicated, timeout=10, message="the replica never acknowledged")
        slot = key_slot(client.keys.rate_limit("api", during).encode())
        victim = next(s for s in cluster.servers if s.port == owner.port)
        victim.crash()
        survivors = [s.port for s in cluster.servers if s.is_running()]

        degraded = 0
        promoted_at = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if promoted_at is None and _slot_served(survivors, slot, owner.port):
                promoted_at = time.monotonic()
            decision = limiter.try_acquire(during)
            if not decision.degraded:
                break
            degraded += 1
            time.sleep(0.02)
        assert degraded > 0, "the master's death was never seen"
        assert promoted_at is not None, "decisions came back before a replica took over"
        recovered_in = time.monotonic() - promoted_at
        assert recovered_in <= RECOVERY_BOUND, f"guards came back {recovered_in:.1f}s after"
        assert not limiter.try_acquire(before).allowed  # the replica had it
        second = lock.try_acquire()
        assert second.token is not None
        assert second.token > first.token
        second.lease.release()  # type: ignore[union-attr]
        client.close()


def _slot_served(ports: list[int], slot: int, dead_port: int) -> bool:
    """Whether every surviving node names a master other than ``dead_port`` for ``slot``
    (a replica of the dead master took it over)."""
    for port in ports:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1) as node:
            try:
                ranges = node.cluster("slots")
            except redis.RedisError:
                return False
        owner = next((r[2][1] for r in ranges if r[0] <= slot <= r[1]), None)
        if owner is None or int(owner) == dead_port:
            return False
    return True
