"""The sync API and taskguard.aio on one Redis and one prefix share their guards (issue
16, part 6): a rate limit holds across both, a lock held by either blocks the other and
its fencing tokens increase across both, a semaphore's slots are shared, a breaker
tripped by either is open for both. Sync calls block, so those made while an asyncio
waiter waits run in a thread (``asyncio.to_thread``)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from taskguard import CircuitOpen, ConcurrencyLimitReached, LockHeld
from taskguard.aio import AsyncClient

from .aio_support import Pair, eventually


def test_a_rate_limit_holds_across_both_apis(pair: Pair) -> None:
    sync = pair.sync.rate_limiter("api", "1/h", burst=3)

    async def test(client: AsyncClient) -> list[bool]:
        limiter = client.rate_limiter("api", "1/h", burst=3)
        allowed = []
        for _ in range(3):  # alternate: each side sees what the other spent
            allowed.append(sync.try_acquire(key="tenant").allowed)
            allowed.append((await limiter.try_acquire(key="tenant")).allowed)
        refused = await limiter.try_acquire(key="tenant")
        assert refused.retry_after == pytest.approx(
            sync.try_acquire(key="tenant").retry_after, abs=1
        )
        return allowed

    assert pair.run(test) == [True, True, True, False, False, False]


def test_a_paused_bucket_is_paused_for_both(pair: Pair) -> None:
    async def test(client: AsyncClient) -> None:
        await client.rate_limiter("partner", "10/s").pause("acme", 30)
        refused = pair.sync.rate_limiter("partner", "10/s").try_acquire(key="acme")
        assert 29 < refused.retry_after <= 30

    pair.run(test)


def test_a_lock_excludes_across_apis_with_increasing_fencing_tokens(pair: Pair) -> None:
    sync_lock = pair.sync.lock("invoice", ttl=30)

    async def test(client: AsyncClient) -> None:
        lock = client.lock("invoice", ttl=30)
        tokens: list[int] = []
        for _ in range(3):
            held = sync_lock.acquire(timeout=0)
            assert held.fencing_token is not None
            tokens.append(held.fencing_token)
            assert await lock.locked()
            with pytest.raises(LockHeld):
                await lock.acquire(timeout=0)
            held.release()
            async with lock.acquire(timeout=0) as mine:
                assert mine.fencing_token is not None
                tokens.append(mine.fencing_token)
                assert sync_lock.locked()
                with pytest.raises(LockHeld):
                    sync_lock.acquire(timeout=0)
        assert all(a < b for a, b in itertools.pairwise(tokens))

    pair.run(test)


def test_a_sync_release_wakes_an_asyncio_waiter(pair: Pair) -> None:
    holder = pair.sync.lock("wake", ttl=30).acquire()

    async def test(client: AsyncClient) -> None:
        # The holder's lease outlasts the timeout: only the release's wake-up fits.
        waiter = asyncio.ensure_future(client.lock("wake", ttl=30).acquire(timeout=10))
        await eventually(lambda: pair.blocked_waiters() == 1)
        await asyncio.to_thread(holder.release)
        held = await waiter
        assert held.fencing_token is not None
        assert holder.fencing_token is not None
        assert held.fencing_token > holder.fencing_token
        await held.release()

    pair.run(test)


def test_an_asyncio_release_wakes_a_sync_waiter(pair: Pair) -> None:
    sync_lock = pair.sync.lock("wake", ttl=30)

    async def test(client: AsyncClient) -> None:
        holder = await client.lock("wake", ttl=30).acquire()
        waiter = asyncio.ensure_future(asyncio.to_thread(sync_lock.acquire, timeout=10))
        await eventually(lambda: pair.blocked_waiters() == 1)
        await holder.release()
        held = await waiter
        assert held.fencing_token is not None
        assert holder.fencing_token is not None
        assert held.fencing_token > holder.fencing_token
        await asyncio.to_thread(held.release)

    pair.run(test)


def test_semaphore_slots_are_shared(pair: Pair) -> None:
    sync_sem = pair.sync.semaphore("partner-api", limit=2, ttl=30)

    async def test(client: AsyncClient) -> None:
        sem = client.semaphore("partner-api", limit=2, ttl=30)
        sync_held = sync_sem.acquire(timeout=0)
        async with sem.acquire(timeout=0):
            with pytest.raises(ConcurrencyLimitReached):
                sync_sem.acquire(timeout=0)
            with pytest.raises(ConcurrencyLimitReached):
                await sem.acquire(timeout=0)
            # A sync release hands its slot to an asyncio waiter.
            waiter = asyncio.ensure_future(sem.acquire(timeout=10))
            await eventually(lambda: pair.blocked_waiters() == 1)
            await asyncio.to_thread(sync_held.release)
            third = await waiter
            assert not sync_sem.try_acquire().allowed
        await third.release()
        assert sync_sem.try_acquire().allowed

    pair.run(test)


async def fail() -> None:
    raise ConnectionError("partner down")


def test_a_breaker_tripped_by_sync_calls_is_open_for_asyncio(pair: Pair) -> None:
    options = {"consecutive_failures": 2, "open_for": 60}
    sync_breaker = pair.sync.circuit_breaker("partner", **options)

    def sync_fail() -> None:
        raise ConnectionError("partner down")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            sync_breaker.call(sync_fail)

    async def test(client: AsyncClient) -> None:
        breaker = client.circuit_breaker("partner", **options)
        assert await breaker.state() == "open"
        with pytest.raises(CircuitOpen) as refused:
            await breaker.call(asyncio.sleep, 0)
        assert 0 < refused.value.retry_after <= 60
        # ...and closed by an asyncio reset for both.
        await breaker.reset()
        assert sync_breaker.state == "closed"

    pair.run(test)


def test_one_window_counts_the_outcomes_of_both_apis(pair: Pair) -> None:
    options = {"consecutive_failures": 2, "open_for": 60}
    sync_breaker = pair.sync.circuit_breaker("mixed", **options)

    def sync_fail() -> None:
        raise ConnectionError("partner down")

    async def test(client: AsyncClient) -> None:
        breaker = client.circuit_breaker("mixed", **options)
        with pytest.raises(ConnectionError):
            await breaker.call(fail)
        assert sync_breaker.state == "closed"
        with pytest.raises(ConnectionError):
            sync_breaker.call(sync_fail)  # the second failure in a row: it trips
        assert await breaker.is_open()
        with pytest.raises(CircuitOpen):
            sync_breaker.call(sync_fail)

    pair.run(test)
