"""taskguard.aio against a real Redis: each asyncio primitive keeps the contract of its
sync twin (limits, exclusion, wake-ups, renewal by the asyncio heartbeat, expiry, the
breaker's state machine), script reloads, and errors sorted into outages and failures."""

from __future__ import annotations

import asyncio

import pytest
import redis

import taskguard.aio
from taskguard import (
    BackendError,
    CircuitOpen,
    ConcurrencyLimitReached,
    LockHeld,
    RateLimited,
)
from taskguard.aio import AsyncClient, AsyncRedisBackend
from taskguard.testing import RedisServer

from .aio_support import Pair, eventually


def test_rate_limiter_spends_the_burst_then_reserves(pair: Pair) -> None:
    async def test(client: AsyncClient) -> None:
        limiter = client.rate_limiter("api", "10/s", burst=3)
        decisions = [await limiter.try_acquire(key="k") for _ in range(4)]
        assert [d.allowed for d in decisions] == [True, True, True, False]
        assert 0 < decisions[-1].retry_after <= 0.1
        with pytest.raises(RateLimited):
            await limiter.acquire(key="k", timeout=0)
        reserved = await limiter.acquire(key="k")  # sleeps until its reserved slot
        assert reserved.allowed
        assert reserved.remaining == 0

    pair.run(test)


def test_lock_renewed_by_the_asyncio_heartbeat_outlives_its_ttl(pair: Pair) -> None:
    async def test(client: AsyncClient) -> None:
        lock = client.lock("long", ttl=0.2)
        async with lock as held:
            await asyncio.sleep(0.7)  # three and a half TTLs, renewed every ttl / 3
            assert not held.lost
            assert not (await lock.try_acquire()).allowed
        assert not await lock.locked()
        assert len(client.backend.heartbeat) == 0

    pair.run(test)


def test_a_lock_not_renewed_expires(pair: Pair) -> None:
    async def test(client: AsyncClient) -> None:
        lock = client.lock("short", ttl=0.2, renew=False)
        held = await lock.acquire(timeout=0)
        unlocked: list[bool] = []

        async def poll() -> None:
            while await lock.locked():
                await asyncio.sleep(0.02)
            unlocked.append(True)

        await asyncio.wait_for(poll(), 5)
        assert unlocked
        assert not await held.release(raise_on_lost=False)

    pair.run(test)


def test_the_heartbeat_reports_a_lease_taken_away(pair: Pair) -> None:
    async def test(client: AsyncClient) -> None:
        held = await client.lock("stolen", ttl=30).acquire()
        pair.inspect.delete(held.op.key)
        assert await client.backend.heartbeat.beat() == [held.op]
        assert held.lost

    pair.run(test)


def test_lock_waiter_is_woken_by_a_release(pair: Pair) -> None:
    async def test(client: AsyncClient) -> None:
        lock = client.lock("wake", ttl=30)
        holder = await lock.acquire()
        # The holder's lease outlasts the timeout: only the release's wake-up fits.
        waiter = asyncio.ensure_future(lock.acquire(timeout=10))
        await eventually(lambda: pair.blocked_waiters() == 1)
        await holder.release()
        async with await waiter as held:
            assert held.fencing_token is not None
            assert holder.fencing_token is not None
            assert held.fencing_token > holder.fencing_token
            with pytest.raises(LockHeld):
                await lock.acquire(timeout=0)

    pair.run(test)


def test_semaphore_caps_and_wakes(pair: Pair) -> None:
    async def test(client: AsyncClient) -> None:
        sem = client.semaphore("pool", limit=2, ttl=30)
        first = await sem.acquire()
        async with sem.acquire(timeout=0):
            with pytest.raises(ConcurrencyLimitReached):
                await sem.acquire(timeout=0)
            waiter = asyncio.ensure_future(sem.acquire(timeout=10))
            await eventually(lambda: pair.blocked_waiters() == 1)
            await first.release()
            third = await waiter
        await third.release()
        slots = pair.sync.keys.slots("pool")
        assert pair.inspect.zcard(slots) == 0

    pair.run(test)


async def fail() -> None:
    raise ConnectionError("down")


def test_breaker_opens_half_opens_and_closes(pair: Pair) -> None:
    async def test(client: AsyncClient) -> None:
        breaker = client.circuit_breaker("svc", consecutive_failures=2, open_for=0.2)
        for _ in range(2):
            with pytest.raises(ConnectionError):
                await breaker.call(fail)
        assert await breaker.state() == "open"
        with pytest.raises(CircuitOpen):
            await breaker.call(asyncio.sleep, 0)
        states: list[str] = []

        async def half_open() -> None:
            while (state := await breaker.state()) == "open":
                await asyncio.sleep(0.02)
            states.append(state)

        await asyncio.wait_for(half_open(), 5)
        assert states == ["half_open"]
        async with breaker:  # the probe
            pass
        assert await breaker.state() == "closed"

    pair.run(test)


def test_a_redis_error_that_is_no_outage_fails_loudly(pair: Pair) -> None:
    async def test(client: AsyncClient) -> None:
        limiter = client.rate_limiter("typed", "1/s")
        pair.inspect.lpush(client.keys.rate_limit("typed"), "not a bucket")
        with pytest.raises(BackendError) as failed:
            await limiter.try_acquire()
        assert failed.value.code == "WRONGTYPE"
        assert failed.value.guards == (repr(limiter.spec),)

    pair.run(test)


def test_scripts_reload_after_script_flush(private_redis: RedisServer) -> None:
    async def main() -> None:
        async with taskguard.aio.connect(private_redis.url, prefix="flush") as client:
            lock = client.lock("doc", renew=False)
            await (await lock.acquire()).release()
            plain = redis.Redis.from_url(private_redis.url)
            plain.script_flush()
            plain.close()
            held = await lock.acquire()  # NOSCRIPT -> SCRIPT LOAD -> EVALSHA
            await held.release()
            backend = client.backend
            assert isinstance(backend, AsyncRedisBackend)
            assert await backend.time() > 0
            await backend.ping()

    asyncio.run(main())
