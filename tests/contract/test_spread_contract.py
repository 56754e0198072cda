"""Admission across Redis Cluster slots stays all-or-nothing (issue 14, part 2).

On a Cluster the key schema spreads: a keyed guard's keys take the hash tag of the key,
so one task's ops can live in several slots, admitted one call per slot in slot order,
with what the earlier slots took given back when a later one refuses. Each test builds
ops whose refusing op lives in the *later* slot (on a cluster), so the undo runs; on
memory and one Redis server the same ops are one atomic call and must behave the same.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterator

import pytest
import redis.cluster
from redis.crc import key_slot

import taskguard
from taskguard import CircuitBreaker, Concurrency, Lock, RateLimit, RateLimiter
from taskguard.backend.limits import set_cap, set_limit, set_quota
from taskguard.backend.ops import LeaseOp, Op, RateOp, SlotOp
from taskguard.backend.parking import Parking
from taskguard.backend.redis import RedisBackend
from taskguard.backend.spread import by_slot
from taskguard.celery._parking import parks
from taskguard.errors import BackendError, BackendUnavailable
from taskguard.guards.quota import QUOTA_KEY_KIND, Quota
from taskguard.keys import KeySchema
from taskguard.testing import wait_until
from taskguard.units import parse_rate

from .harness import CLUSTER_TOO, Contract

pytestmark = CLUSTER_TOO


@pytest.fixture
def backend(contract: Contract) -> taskguard.Backend:
    return contract.backend


def _slot(key: str) -> int:
    return int(key_slot(key.encode()))


def ordered_buckets(keys: KeySchema, name: str) -> Iterator[tuple[str, str]]:
    """Pairs of buckets (first, later) whose rate-limit keys lie in two different slots,
    the first one's slot taken first (on a spread schema; any pair elsewhere)."""
    n = 0
    while True:
        a, b = f"a{n}", f"b{n}"
        n += 1
        slot_a, slot_b = _slot(keys.rate_limit(name, a)), _slot(keys.rate_limit(name, b))
        if not keys.spread or slot_a < slot_b:
            yield a, b


def pair(keys: KeySchema, name: str) -> tuple[str, str]:
    return next(ordered_buckets(keys, name))


def rate(keys: KeySchema, name: str, bucket: str, *, burst: int = 1) -> RateOp:
    return RateOp(keys.rate_limit(name, bucket), interval=60.0, burst=burst)


def lock(keys: KeySchema, name: str, bucket: str, owner: str) -> LeaseOp:
    return LeaseOp(keys.lock(name, bucket), owner=owner, ttl=30.0)


def cap(keys: KeySchema, name: str, bucket: str, owner: str) -> SlotOp:
    return SlotOp(keys.slots(name, bucket), owner=owner, ttl=30.0, limit=1)


def test_a_cluster_spreads_keyed_guards_over_slots(contract: Contract) -> None:
    keys = contract.backend.keys
    assert keys.spread is (contract.kind == "cluster")
    slots = {_slot(keys.rate_limit("api", f"customer-{i}")) for i in range(50)}
    if contract.kind == "cluster":
        assert len(slots) > 40  # one slot per key, nearly
        assert _slot(keys.rate_limit("api")) == _slot(keys.slots("cap"))  # unkeyed: one tag
    else:
        assert len(slots) == 1  # one tag for everything, as before


def test_a_refused_later_slot_refunds_exactly_the_tokens_taken(backend: taskguard.Backend) -> None:
    keys, name = backend.keys, f"rl-{uuid.uuid4().hex[:6]}"
    a, b = pair(keys, name)
    first = rate(keys, name, a, burst=3)
    assert backend.admit([first]).remaining == 2
    assert backend.admit([rate(keys, name, b)]).allowed  # b's one token is spent now
    refused = backend.admit([first, rate(keys, name, b)])
    assert not refused.allowed
    assert refused.denied == 1
    assert refused.retry_after > 0
    # a's token came back, and only that one: two are left, as before the refused call.
    assert backend.admit([first]).remaining == 1


def test_a_refused_later_slot_gives_back_a_lock(backend: taskguard.Backend) -> None:
    keys, name = backend.keys, f"lk-{uuid.uuid4().hex[:6]}"
    a, b = pair(keys, name)
    assert backend.admit([rate(keys, name, b)]).allowed
    refused = backend.admit([lock(keys, name, a, "me"), rate(keys, name, b)])
    assert not refused.allowed
    assert refused.denied == 1
    assert backend.owner(keys.lock(name, a)) is None
    assert backend.admit([lock(keys, name, a, "other")]).allowed


def test_a_refused_later_slot_gives_back_a_concurrency_slot(backend: taskguard.Backend) -> None:
    keys, name = backend.keys, f"cap-{uuid.uuid4().hex[:6]}"
    a, b = pair(keys, name)
    assert backend.admit([lock(keys, name, b, "holder")]).allowed
    refused = backend.admit([cap(keys, name, a, "me"), lock(keys, name, b, "me")])
    assert not refused.allowed
    assert refused.denied == 1
    assert backend.admit([cap(keys, name, a, "other")]).allowed  # limit 1: it was free


def test_a_refused_later_slot_restores_a_dropped_claim(backend: taskguard.Backend) -> None:
    keys, name = backend.keys, f"uq-{uuid.uuid4().hex[:6]}"
    a, b = pair(keys, name)
    claim = LeaseOp(keys.unique(name, a), owner="msg-1", ttl=30.0, purpose="claim")
    assert backend.admit([claim]).allowed  # claimed at publish
    assert backend.admit([rate(keys, name, b)]).allowed
    dropping = LeaseOp(claim.key, owner="msg-1", ttl=30.0, drop=True, purpose="claim")
    assert not backend.admit([dropping, rate(keys, name, b)]).allowed
    assert backend.owner(claim.key) == "msg-1"  # the deferred message keeps its claim
    assert backend.admit([dropping]).allowed  # when it is admitted, the claim goes
    assert backend.owner(claim.key) is None


def test_an_admission_across_slots_takes_everything_when_all_pass(
    backend: taskguard.Backend,
) -> None:
    keys, name = backend.keys, f"ok-{uuid.uuid4().hex[:6]}"
    a, b = pair(keys, name)
    ops: list[Op] = [
        rate(keys, name, b, burst=2),
        lock(keys, name, a, "me"),
        cap(keys, name, b, "me"),
    ]
    admitted = backend.admit(ops)
    assert admitted.allowed
    assert admitted.remaining == 1
    assert len(admitted.tokens) == 3
    assert backend.owner(keys.lock(name, a)) == "me"
    held = [op for op in ops if not isinstance(op, RateOp)]
    assert backend.renew(held) == [True, True]  # one call per slot
    assert backend.release(held) == [1, 1]
    assert backend.renew(held) == [False, False]
    assert backend.admit([lock(keys, name, a, "other"), cap(keys, name, b, "other")]).allowed


def test_a_failing_later_slot_gives_back_the_earlier_ones(contract: Contract) -> None:
    if contract.kind != "cluster":
        # One server runs both ops in one script, and Redis keeps what a script wrote
        # before it failed: the lock taken in the check stays (until its TTL).
        pytest.skip("a failure between slots needs several slots")
    backend = contract.backend
    keys, name = backend.keys, f"err-{uuid.uuid4().hex[:6]}"
    a, b = pair(keys, name)
    broken = cap(keys, name, b, "me")
    contract.client.set(broken.key, "not a sorted set", ex=60)
    with pytest.raises(BackendError):
        backend.admit([lock(keys, name, a, "me"), broken])
    assert backend.owner(keys.lock(name, a)) is None


def test_a_tag_template_puts_a_tasks_guards_in_one_slot(backend: taskguard.Backend) -> None:
    keys = backend.keys
    signature = None
    limit = RateLimit("10/s", key="{customer_id}", name="per-customer").bind("t", signature)
    doc = Lock(key="{document_id}", tag="{customer_id}", name="doc").bind("t", signature)
    loose = Lock(key="{document_id}", name="doc-loose").bind("t", signature)
    kwargs = {"customer_id": "c-42", "document_id": "d-7"}
    ops = limit.task_ops(keys, (), kwargs, "task-1") + doc.task_ops(keys, (), kwargs, "task-1")
    assert len(by_slot(ops)) == 1  # one call, whatever the topology
    assert backend.admit(ops).allowed
    if keys.spread:
        untagged = loose.task_ops(keys, (), kwargs, "task-1")[0]
        assert _slot(untagged.key) != _slot(ops[0].key)  # the document's own slot
    # A second run for the same customer and document waits for the lock, takes nothing.
    again = limit.task_ops(keys, (), kwargs, "task-2") + doc.task_ops(keys, (), kwargs, "task-2")
    refused = backend.admit(again)
    assert not refused.allowed


def test_a_bucket_placed_by_tag_is_named_by_its_tag_outside_a_run(
    backend: taskguard.Backend,
) -> None:
    """A standalone call or a pause naming a tagged limit's bucket by key must reach the
    bucket the tasks use: on a spread schema its tag is needed (the key alone names
    another slot's key), and refused without it rather than passing silently apart."""
    name = f"tagged-{uuid.uuid4().hex[:6]}"
    spec = RateLimit("10/s", key="{customer}:{region}", tag="{customer}", name=name)
    run = spec.bind("t", None).task_ops(backend.keys, (), {"customer": "c9", "region": "eu"}, "r")
    limiter = RateLimiter(backend, spec)
    if backend.keys.spread:
        with pytest.raises(ValueError, match="tag="):
            limiter.pause("c9:eu", 5)
        with pytest.raises(ValueError, match="tag="):
            limiter.try_acquire("c9:eu")
    assert limiter.pause("c9:eu", 5, tag="c9").retry_after > 4
    refused = backend.admit(run)
    assert not refused.allowed  # the task's own bucket is the paused one
    assert refused.retry_after > 4
    assert limiter.try_acquire("c9:eu", tag="c9").retry_after > 4
    assert limiter.try_acquire("c9:us", tag="c9").allowed  # another bucket, same slot


def test_keyed_guards_follow_limits_set_at_run_time(backend: taskguard.Backend) -> None:
    """On a spread schema the hashes of run-time limits are in the prefix's slot, apart
    from a keyed guard's: the backend reads them itself, and this backend's own change
    applies at once."""
    keys, name = backend.keys, f"rt-{uuid.uuid4().hex[:6]}"
    limit = RateLimit("100/s", key="{k}", burst=10, name=name).bind("t", None)
    cap = Concurrency(1, key="{k}", name=name).bind("t", None)

    def ops(task_id: str) -> list[Op]:
        kwargs = {"k": "c1"}
        return limit.task_ops(keys, (), kwargs, task_id) + cap.task_ops(keys, (), kwargs, task_id)

    set_limit(backend, name, parse_rate("1/m"), burst=1, key="c1")  # this key only
    first = ops("t1")
    assert backend.admit(first).allowed
    second = ops("t2")
    refused = backend.admit(second)
    assert not refused.allowed  # the cap is full, and the run-time rate too
    assert refused.retry_after > 30  # the bucket's: 1/m, not the code's 100/s
    assert backend.admit([limit.task_ops(keys, (), {"k": "c2"}, "t3")[0]]).allowed
    set_cap(backend, name, 2)  # every key
    assert not backend.admit(second).allowed  # a slot is free now, but not the bucket
    assert backend.admit([op for op in second if isinstance(op, SlotOp)]).allowed
    held = [op for op in (*first, *second) if isinstance(op, SlotOp)]
    assert backend.renew(held) == [True, True]
    assert backend.release(held) == [1, 1]


def test_a_keyed_cap_parks_counting_its_cap_set_at_run_time(contract: Contract) -> None:
    """A parked task is handed back when its cap has room by the count set at run time.
    On a spread schema the keyed cap's hash of counts is in the prefix's slot, which the
    parking script cannot read: the count is read by the client before parking."""
    backend = contract.backend
    if not isinstance(backend, RedisBackend):
        pytest.skip("tasks park on Redis only (memory defers by time)")
    name = f"parked-{uuid.uuid4().hex[:6]}"
    cap = Concurrency(1, key="{k}", name=name).bind("t", None)
    [holder] = cap.task_ops(backend.keys, (), {"k": "c1"}, "holder")
    assert isinstance(holder, SlotOp)
    assert backend.admit([holder]).allowed  # cap 1: full
    set_cap(backend, name, 2)  # every key: one more slot
    parking = Parking(backend)
    how = parks(parking.localized(holder))
    assert how is not None
    mode, limit, overrides = how
    assert (limit, overrides) == (
        (2, None) if backend.keys.spread else (1, (holder.overrides, holder.field))
    )
    handed = parking.park(
        holder.key, mode=mode, limit=limit, ticket="a", seq=1, payload=b"a", overrides=overrides
    )
    assert handed == [b"a"]  # room by the run-time count: handed back at once


def test_a_refused_later_slot_gives_back_a_half_open_probe(contract: Contract) -> None:
    backend = contract.backend
    keys, name = backend.keys, f"cb-{uuid.uuid4().hex[:6]}"
    spec = CircuitBreaker(name, consecutive_failures=1, open_for=0.3, half_open_probes=1)
    tripping = spec.call_op(keys, "t0")
    assert backend.admit([tripping]).allowed
    assert backend.release([dataclasses.replace(tripping, mode="f")]) == [1]  # opened
    contract.elapse(0.4)  # half-open: one probe at a time
    bucket = next(
        b
        for b in (f"k{i}" for i in range(1000))
        if _slot(keys.rate_limit(name, b)) > _slot(tripping.key) or not keys.spread
    )
    assert backend.admit([rate(keys, name, bucket)]).allowed  # the bucket is spent now
    refused = backend.admit([spec.call_op(keys, "t1"), rate(keys, name, bucket)])
    assert not refused.allowed
    assert refused.denied == 1
    # The probe the breaker's slot handed out came back unrecorded: the next call probes
    # (1; 2 where the refusal was one atomic call, so the breaker was still open).
    probe = spec.call_op(keys, "t2")
    assert backend.admit([probe]).tokens in ((1,), (2,))
    assert backend.release([dataclasses.replace(probe, mode="s")]) == [3]  # closed


def test_the_asyncio_backend_spreads_and_admits_across_slots_alike(contract: Contract) -> None:
    if contract.kind != "cluster":
        pytest.skip("the asyncio backend's spread schema: a cluster only")
    from taskguard.aio import connect as aio_connect

    sync = contract.backend
    keys, name = sync.keys, f"aio-{uuid.uuid4().hex[:6]}"
    a, b = pair(keys, name)

    async def scenario() -> None:
        client = aio_connect(contract.url, prefix=contract.prefix)
        try:
            backend = client.backend
            assert backend.keys == keys  # the same key names as a sync worker's
            first = rate(keys, name, a, burst=3)
            assert (await backend.admit([first])).remaining == 2
            assert sync.admit([rate(keys, name, b)]).allowed  # spent by a sync worker
            refused = await backend.admit([first, rate(keys, name, b)])
            assert not refused.allowed
            assert refused.denied == 1
            assert (await backend.admit([first])).remaining == 1  # refunded exactly
            held = [lock(keys, name, a, "me"), cap(keys, name, b, "me")]
            assert (await backend.admit(held)).allowed
            assert not sync.admit([lock(keys, name, a, "other")]).allowed
            assert await backend.renew(held) == [True, True]
            assert await backend.release(held) == [1, 1]
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_an_outage_of_a_later_slot_gives_back_the_earlier_ones(contract: Contract) -> None:
    """The later slot's master stops answering (``CLIENT PAUSE``): the admission fails as
    an outage, which opens the backend's outage breaker, and the earlier slot, on a live
    master, is given back all the same."""
    if contract.kind != "cluster":
        pytest.skip("an outage of one slot needs several masters")
    cluster = contract.client
    assert isinstance(cluster, redis.cluster.RedisCluster)
    backend = contract.backend
    keys, name = backend.keys, f"down-{uuid.uuid4().hex[:6]}"
    a, b = next(
        (a, b)
        for a, b in ordered_buckets(keys, name)
        if cluster.get_node_from_key(keys.lock(name, a)).name
        != cluster.get_node_from_key(keys.slots(name, b)).name
    )
    paused = cluster.get_redis_connection(cluster.get_node_from_key(keys.slots(name, b)))
    paused.execute_command("CLIENT", "PAUSE", 5000, "ALL")
    try:
        with pytest.raises(BackendUnavailable):
            backend.admit([lock(keys, name, a, "me"), cap(keys, name, b, "me")])
        assert cluster.get(keys.lock(name, a)) is None  # given back on its live master
    finally:
        paused.execute_command("CLIENT", "UNPAUSE")
    wait_until(lambda: _admits(backend, [lock(keys, name, a, "other")]), timeout=10)


def _admits(backend: taskguard.Backend, ops: list[Op]) -> bool:
    try:
        return backend.admit(ops).allowed
    except BackendUnavailable:
        return False  # the outage breaker's cooldown


def test_a_refused_later_slot_gives_back_a_quota_call(backend: taskguard.Backend) -> None:
    keys, name = backend.keys, f"qt-{uuid.uuid4().hex[:6]}"
    a, b = next(
        (a, b)
        for a, b in ordered_buckets(keys, name)
        if not keys.spread
        or _slot(keys.guard(QUOTA_KEY_KIND, name, a)) < _slot(keys.rate_limit(name, b))
    )
    quota = Quota("3/day", key="{k}", name=name).bind("t", None)
    assert backend.admit([quota.op(keys, a)]).tokens == (2,)  # calls left
    assert backend.admit([rate(keys, name, b)]).allowed
    assert not backend.admit([quota.op(keys, a), rate(keys, name, b)]).allowed
    assert backend.admit([quota.op(keys, a)]).tokens == (1,)  # the refused call came back


def test_a_keyed_quota_follows_an_allowance_set_at_run_time(backend: taskguard.Backend) -> None:
    keys, name = backend.keys, f"qa-{uuid.uuid4().hex[:6]}"
    quota = Quota("1/day", key="{k}", name=name).bind("t", None)
    set_quota(backend, name, 5, "day", key="acme")
    assert backend.admit([quota.op(keys, "acme")]).tokens == (4,)  # calls left
    assert backend.admit([quota.op(keys, "other")]).tokens == (0,)  # the code's 1/day
