"""Concurrency slots, one contract on two backends: memory (fake clock) and real Redis.

A slot is a lease in a set of at most ``limit`` holders: an owner re-takes its own slot
without taking a second, only the owner renews or releases it, an expired holder is pruned
before counting, and a release wakes as many blocked waiters as slots were freed (never
more than ``limit``). Time passes through ``elapse``: the fake clock on memory, real time
on Redis, so the Redis half keeps its TTLs short and asserts bounds, never speed.
"""

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest

import taskguard
from taskguard.backend.ops import RateOp, SlotOp
from taskguard.testing import wait_until

from .harness import CLUSTER_TOO, REDIS_ONLY, Contract

pytestmark = CLUSTER_TOO


@dataclass
class Harness:
    backend: taskguard.Backend
    elapse: Callable[[float], None]
    name: str
    blocked_waiters: Callable[[], int]


@pytest.fixture
def harness(contract: Contract) -> Harness:
    name = f"cap-{uuid.uuid4().hex[:6]}"  # wake-up lists must not leak between tests
    return Harness(contract.backend, contract.elapse, name, contract.blocked_waiters)


def slot(
    h: Harness, owner: str, *, limit: int = 2, ttl: float = 10.0, bucket: str | None = None
) -> SlotOp:
    keys = h.backend.keys
    return SlotOp(
        keys.slots(h.name, bucket),
        owner=owner,
        ttl=ttl,
        limit=limit,
        wakeup_key=keys.slot_wakeup(h.name, bucket),
    )


def wakeups(h: Harness, op: SlotOp, *, timeout: float = 0.2, most: int = 10) -> int:
    """How many pending wake-ups ``op``'s list holds (each taken by one waiter)."""
    count = 0
    while count < most and h.backend.wait_for_wakeup(op.wakeup_key or "", timeout):
        count += 1
    return count


def test_limit_holders_admitted_then_denied_until_the_earliest_expiry(harness: Harness) -> None:
    backend = harness.backend
    assert backend.admit([slot(harness, "a", ttl=30)]).allowed
    harness.elapse(0.5)
    assert backend.admit([slot(harness, "b", ttl=10)]).allowed
    refused = backend.admit([slot(harness, "c")])
    assert (refused.allowed, refused.denied, refused.reserved) == (False, 0, False)
    # b's lease (10 s) ends before a's (29.5 s left): the earliest expiry is the estimate.
    assert 9.0 < refused.retry_after <= 10.0


def test_same_owner_is_readmitted_without_a_second_slot(harness: Harness) -> None:
    backend = harness.backend
    assert backend.admit([slot(harness, "a")]).allowed
    assert backend.admit([slot(harness, "a")]).allowed  # its own slot, taken again
    assert backend.admit([slot(harness, "b")]).allowed  # so one slot was still free
    assert not backend.admit([slot(harness, "c")]).allowed
    assert backend.admit([slot(harness, "a")]).allowed  # still its own, at the cap


def test_readmission_refreshes_the_lease(harness: Harness) -> None:
    backend = harness.backend
    assert backend.admit([slot(harness, "a", limit=1, ttl=1.0)]).allowed
    harness.elapse(0.6)
    assert backend.admit([slot(harness, "a", limit=1, ttl=1.0)]).allowed
    harness.elapse(0.6)  # 1.2 s after the first take, 0.6 s after the second
    refused = backend.admit([slot(harness, "b", limit=1)])
    assert not refused.allowed
    assert refused.retry_after <= 0.45


def test_expired_holders_are_pruned(harness: Harness) -> None:
    backend = harness.backend
    late = [slot(harness, owner, ttl=0.2) for owner in ("a", "b")]
    assert backend.admit(late).allowed
    assert not backend.admit([slot(harness, "c")]).allowed
    harness.elapse(0.4)
    assert backend.admit([slot(harness, "c")]).allowed
    assert backend.admit([slot(harness, "d")]).allowed
    assert not backend.admit([slot(harness, "e")]).allowed
    # A late holder's release frees nothing of the new holders'.
    assert backend.release(late) == [False, False]
    assert not backend.admit([slot(harness, "e")]).allowed


def test_release_frees_only_the_owners_slot_and_wakes_a_waiter(harness: Harness) -> None:
    backend = harness.backend
    a, b = slot(harness, "a"), slot(harness, "b")
    assert backend.admit([a, b]).allowed
    assert backend.release([slot(harness, "stranger")]) == [False]
    assert wakeups(harness, a) == 0  # a refused release wakes nobody
    assert not backend.admit([slot(harness, "c")]).allowed
    assert backend.release([a]) == [True]
    assert wakeups(harness, a) == 1
    assert backend.admit([slot(harness, "c")]).allowed
    assert not backend.admit([slot(harness, "d")]).allowed  # b kept its slot
    assert backend.release([a]) == [False]  # a second release is not ours any more


def test_a_release_wakes_a_blocked_waiter(harness: Harness) -> None:
    backend = harness.backend
    held = slot(harness, "a", limit=1)
    assert backend.admit([held]).allowed
    timer = threading.Timer(0.1, backend.release, args=[[held]])
    timer.start()
    started = time.monotonic()
    try:
        assert backend.wait_for_wakeup(held.wakeup_key or "", 10) is True
    finally:
        timer.join()
    assert time.monotonic() - started < 5  # woken by the release, not by the timeout
    assert backend.admit([slot(harness, "b", limit=1)]).allowed


def test_slots_released_together_wake_as_many_waiters(harness: Harness) -> None:
    backend = harness.backend
    held = [slot(harness, owner, limit=3) for owner in ("a", "b", "c")]
    assert backend.admit(held).allowed
    assert backend.release(held) == [True, True, True]
    assert wakeups(harness, held[0]) == 3


def test_pending_wakeups_are_capped_at_the_limit(harness: Harness) -> None:
    backend = harness.backend
    for owner in ("a", "b", "c", "d"):  # four releases, nobody waiting
        op = slot(harness, owner)
        assert backend.admit([op]).allowed
        assert backend.release([op]) == [True]
    assert wakeups(harness, op) == 2  # no more wake-ups than slots


def test_blocked_waiters_woken_by_one_multi_slot_release(harness: Harness) -> None:
    backend = harness.backend
    held = [slot(harness, owner) for owner in ("a", "b")]
    assert backend.admit(held).allowed
    woken: list[bool] = []
    key = held[0].wakeup_key or ""
    waiters = [
        threading.Thread(target=lambda: woken.append(backend.wait_for_wakeup(key, 10)))
        for _ in range(2)
    ]
    for waiter in waiters:
        waiter.start()
    wait_until(lambda: harness.blocked_waiters() == 2, timeout=10)
    started = time.monotonic()
    assert backend.release(held) == [True, True]
    for waiter in waiters:
        waiter.join(10)
    assert woken == [True, True]
    assert time.monotonic() - started < 5


def test_renew_only_by_owner(harness: Harness) -> None:
    backend = harness.backend
    mine = slot(harness, "a", limit=1, ttl=0.6)
    assert backend.admit([mine]).allowed
    assert backend.renew([slot(harness, "b", limit=1, ttl=0.6)]) == [False]
    harness.elapse(0.35)
    assert backend.renew([mine]) == [True]
    harness.elapse(0.35)  # 0.7 s after the take, 0.35 s after the renewal
    assert not backend.admit([slot(harness, "b", limit=1)]).allowed
    harness.elapse(0.5)
    assert backend.renew([mine]) == [False]  # an expired slot is not revived
    assert backend.admit([slot(harness, "b", limit=1)]).allowed


def test_lowering_the_limit_admits_nobody_until_below_it(harness: Harness) -> None:
    backend = harness.backend
    held = [slot(harness, owner, limit=3) for owner in ("a", "b", "c")]
    assert backend.admit(held).allowed
    assert not backend.admit([slot(harness, "new", limit=1)]).allowed
    assert backend.release(held[:2]) == [True, True]
    assert not backend.admit([slot(harness, "new", limit=1)]).allowed  # 1 held, limit 1
    assert backend.release(held[2:]) == [True]
    assert backend.admit([slot(harness, "new", limit=1)]).allowed


def test_raising_the_limit_admits_at_once(harness: Harness) -> None:
    backend = harness.backend
    assert backend.admit([slot(harness, owner, limit=2) for owner in ("a", "b")]).allowed
    assert not backend.admit([slot(harness, "c", limit=2)]).allowed
    assert backend.admit([slot(harness, "c", limit=3)]).allowed
    assert not backend.admit([slot(harness, "d", limit=3)]).allowed


def test_per_key_sets_are_independent(harness: Harness) -> None:
    backend = harness.backend
    assert backend.admit([slot(harness, "a", limit=1, bucket="tenant-1")]).allowed
    assert not backend.admit([slot(harness, "b", limit=1, bucket="tenant-1")]).allowed
    assert backend.admit([slot(harness, "b", limit=1, bucket="tenant-2")]).allowed
    assert backend.admit([slot(harness, "c", limit=1)]).allowed  # the keyless cap, too


def test_slot_denied_means_rate_not_charged(harness: Harness) -> None:
    backend = harness.backend
    bucket = RateOp(backend.keys.rate_limit(harness.name), interval=10.0, burst=3)
    assert backend.admit([slot(harness, "holder", limit=1)]).allowed
    refused = backend.admit([slot(harness, "b", limit=1), bucket], reserve_within=60)
    assert (refused.allowed, refused.denied, refused.reserved) == (False, 0, False)
    assert backend.admit([bucket]).remaining == 2  # the refused call took no token


def test_rate_denied_means_slot_not_taken(harness: Harness) -> None:
    backend = harness.backend
    bucket = RateOp(backend.keys.rate_limit(harness.name), interval=10.0, burst=1)
    assert backend.admit([bucket]).allowed
    refused = backend.admit([slot(harness, "a", limit=1), bucket])
    assert (refused.allowed, refused.denied) == (False, 1)
    assert 9.0 < refused.retry_after <= 10.0
    assert backend.admit([slot(harness, "b", limit=1)]).allowed  # "a" took nothing


def test_slot_and_rate_admitted_together(harness: Harness) -> None:
    backend = harness.backend
    bucket = RateOp(backend.keys.rate_limit(harness.name), interval=10.0, burst=2)
    admitted = backend.admit([slot(harness, "a", limit=1), bucket])
    assert (admitted.allowed, admitted.remaining, admitted.tokens) == (True, 1, (0, 0))
    assert not backend.admit([slot(harness, "b", limit=1)]).allowed


@REDIS_ONLY
def test_every_redis_key_a_slot_writes_expires(contract: Contract) -> None:
    backend, client, tg_prefix = contract.backend, contract.client, contract.prefix
    assert client is not None
    keys = backend.keys
    ops = [
        SlotOp(
            keys.slots("ttl", "k"), owner=o, ttl=5, limit=3, wakeup_key=keys.slot_wakeup("ttl", "k")
        )
        for o in ("a", "b")
    ]
    assert backend.admit(ops).allowed
    assert backend.renew(ops) == [True, True]
    assert 0 < client.pttl(ops[0].key) <= 5000
    assert backend.release(ops[:1]) == [True]
    written = {k.decode() for k in client.scan_iter(match=f"{tg_prefix}:*")}
    assert written == {ops[0].key, keys.slot_wakeup("ttl", "k")}
    for key in written:
        assert client.pttl(key) > 0, key
    assert backend.release(ops[1:]) == [True]
    assert not client.exists(ops[0].key)  # the last release leaves no empty set behind
