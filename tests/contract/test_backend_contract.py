"""One contract, two backends: the memory backend and Redis must answer alike.

The Redis half runs against a real server (the ``contract`` fixture), so these tests use
real time: they assert decisions and bounds, never speed.
"""

import time

import pytest

import taskguard
from taskguard.backend.ops import RateOp

from .harness import REDIS_ONLY, TOPOLOGIES, Contract

pytestmark = TOPOLOGIES


@pytest.fixture
def backend(contract: Contract) -> taskguard.Backend:
    return contract.backend


def op(backend: taskguard.Backend, name: str, *, interval: float, burst: int = 1, cost: int = 1):
    return RateOp(backend.keys.rate_limit(name), interval=interval, burst=burst, cost=cost)


def test_burst_then_deny(backend: taskguard.Backend) -> None:
    bucket = op(backend, "burst", interval=10.0, burst=3)
    results = [backend.admit([bucket]) for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    assert [r.remaining for r in results] == [2, 1, 0, 0]
    assert results[3].denied == 0
    assert 9.0 < results[3].retry_after <= 10.0


def test_all_or_nothing(backend: taskguard.Backend) -> None:
    loose = op(backend, "loose", interval=10.0, burst=5)
    tight = op(backend, "tight", interval=10.0, burst=1)
    assert backend.admit([loose, tight]).allowed
    refused = backend.admit([loose, tight])
    assert (refused.allowed, refused.denied) == (False, 1)
    # Only one token left the loose bucket: the refused call took nothing.
    assert backend.admit([loose]).remaining == 3


def test_reservations_queue_up_exactly(backend: taskguard.Backend) -> None:
    bucket = op(backend, "reserve", interval=5.0)
    assert backend.admit([bucket]).allowed
    since = time.monotonic()
    first = backend.admit([bucket], reserve_within=60)
    second = backend.admit([bucket], reserve_within=60)
    assert first.reserved
    assert second.reserved
    # Each wait is counted from its own call: on Redis the real time between the calls
    # (as long as a busy machine makes it) comes off; on memory (a fake clock) none does.
    gone = time.monotonic() - since
    assert 5.0 - gone - 0.002 <= second.retry_after - first.retry_after <= 5.0 + 0.002
    beyond = backend.admit([bucket], reserve_within=1)
    assert not beyond.reserved
    gone = time.monotonic() - since
    assert second.retry_after + 5.0 - gone - 0.002 <= beyond.retry_after
    assert beyond.retry_after <= second.retry_after + 5.0 + 0.002


def test_cost(backend: taskguard.Backend) -> None:
    bucket = op(backend, "cost", interval=10.0, burst=4, cost=3)
    assert backend.admit([bucket]).remaining == 1
    assert not backend.admit([bucket]).allowed


def test_empty_admission_is_allowed(backend: taskguard.Backend) -> None:
    assert backend.admit([]).allowed


def test_time_is_wall_clock(backend: taskguard.Backend) -> None:
    import time

    assert abs(backend.time() - time.time()) < 5


@REDIS_ONLY
def test_redis_keys_expire_and_share_one_hash_tag(contract: Contract) -> None:
    backend, client, tg_prefix = contract.backend, contract.client, contract.prefix
    assert client is not None
    bucket = op(backend, "ttl", interval=2.0, burst=3)
    backend.admit([bucket])
    ttl_ms = client.pttl(bucket.key)
    assert 0 < ttl_ms <= 2001  # expires as soon as the bucket is full again
    assert bucket.key.startswith(f"{tg_prefix}:{{{tg_prefix}}}:rl:")


def test_no_reservation_that_would_block_a_shared_bucket(backend: taskguard.Backend) -> None:
    """A per-customer bucket far behind must not push the shared bucket's slot out."""
    customer = op(backend, "customer-x", interval=10.0)
    shared = op(backend, "shared", interval=0.01, burst=100)
    assert backend.admit([customer, shared]).allowed
    denied = backend.admit([customer, shared], reserve_within=60)
    assert not denied.allowed
    assert not denied.reserved
    assert denied.denied == 0
    other_customer = op(backend, "customer-y", interval=10.0)
    assert backend.admit([other_customer, shared]).remaining == 0  # customer-y's bucket
    assert backend.admit([shared]).remaining == 97  # only two tokens ever left it


def test_reservation_across_buckets_in_step(backend: taskguard.Backend) -> None:
    a = op(backend, "step-a", interval=5.0)
    b = op(backend, "step-b", interval=5.0)
    assert backend.admit([a, b]).allowed
    reserved = backend.admit([a, b], reserve_within=60)
    assert reserved.reserved
    assert 4.5 < reserved.retry_after <= 5.0
