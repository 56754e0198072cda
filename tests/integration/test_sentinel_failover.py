"""A Sentinel failover under a running client: the master this test started is killed, the
sentinels promote its replica, and taskguard finds the new master by itself.

What it proves (docs/outages.md, "Failover"): while no master answers, every decision is
the outage policy's (``degraded``) and nothing raises anything but ``BackendUnavailable``;
once the sentinels name the new master, guards enforce again within 5 s; and a fencing
token handed out before the failover (and acknowledged by the replica, ``WAIT``) is
exceeded by the next one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

import taskguard
from taskguard.testing import wait_until
from taskguard.testing.topologies import RedisSentinel

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
