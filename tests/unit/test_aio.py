"""taskguard.aio on the memory backend and a fake clock: each primitive's API, and a sync
client sharing the same memory backend. No server, no sleeping (a reservation's wait
advances the fake clock); each test runs its own event loop with ``asyncio.run``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

import taskguard
import taskguard.aio
from taskguard import (
    BackendUnavailable,
    CircuitOpen,
    ConcurrencyLimitReached,
    LockHeld,
    LockLost,
    RateLimited,
)
from taskguard.aio import AsyncClient, AsyncMemoryBackend
from taskguard.clock import FakeClock

T = TypeVar("T")


def run(test: Callable[[AsyncClient, FakeClock], Awaitable[T]]) -> T:
    """Run ``test`` in a fresh event loop with a client on a fresh memory backend."""
    clock = FakeClock(start=1_000_000.0)

    async def main() -> T:
        async with taskguard.aio.connect(AsyncMemoryBackend(clock=clock)) as client:
            return await test(client, clock)

    return asyncio.run(main())


# ---------------------------------------------------------------- rate limiter


def test_limiter_try_acquire_spends_the_burst_then_refuses() -> None:
    async def test(client: AsyncClient, clock: FakeClock) -> None:
        limiter = client.rate_limiter("sms", "2/s", burst=2)
        first = await limiter.try_acquire(key="+44")
        assert first.allowed
        assert first.remaining == 1
        assert (await limiter.try_acquire(key="+44")).allowed
        refused = await limiter.try_acquire(key="+44")
        assert not refused
        assert refused.retry_after == pytest.approx(0.5)
        assert (await limiter.try_acquire(key="+33")).allowed  # another bucket
        clock.advance(0.5)
        assert (await limiter.try_acquire(key="+44")).allowed

    run(test)


def test_limiter_acquire_reserves_and_waits_for_the_slot() -> None:
    async def test(client: AsyncClient, clock: FakeClock) -> None:
        limiter = client.rate_limiter("api", "1/s")
        await limiter.acquire(key="k")
        before = clock.time()
        async with limiter.acquire(key="k") as decision:  # waits one interval (fake)
            assert decision.allowed
        assert clock.time() - before == pytest.approx(1.0)
        with pytest.raises(RateLimited) as refused:
            await limiter.acquire(key="k", timeout=0.1)
        assert refused.value.retry_after == pytest.approx(1.0)

    run(test)


def test_limiter_as_context_manager_and_decorator() -> None:
    async def test(client: AsyncClient, clock: FakeClock) -> None:
        limiter = client.rate_limiter("calls", "10/s", key="{user}")

        @limiter
        async def fetch(user: str) -> str:
            return f"hello {user}"

        assert await fetch("ada") == "hello ada"
        assert not (await limiter.try_acquire(key="ada")).allowed
        async with limiter as decision:
            assert decision.allowed
            assert decision.key is None

    run(test)


def test_limiter_pause_and_observe() -> None:
    async def test(client: AsyncClient, clock: FakeClock) -> None:
        limiter = client.rate_limiter("partner", "10/s")
        assert (await limiter.pause("acme", 30)).retry_after == pytest.approx(30.0)
        assert (await limiter.try_acquire(key="acme")).retry_after == pytest.approx(30.0)
        assert not await limiter.observe("other", remaining=5, reset_after=60)
        paused = await limiter.observe("other", remaining=0, reset_at=clock.time() + 20)
        assert paused.retry_after == pytest.approx(20.0)

    run(test)


def test_an_acquire_never_awaited_leaves_no_coroutine_behind() -> None:
    # filterwarnings=error turns "coroutine ... was never awaited" into a failure.
    async def test(client: AsyncClient, clock: FakeClock) -> None:
        client.rate_limiter("x", "1/s").acquire()
        client.lock("x").acquire(timeout=1)

    run(test)


# ---------------------------------------------------------------- lock


def test_lock_excludes_and_hands_out_increasing_tokens() -> None:
    async def test(client: AsyncClient, clock: FakeClock) -> None:
        lock = client.lock("report", ttl=30)
        tokens = []
        for _ in range(3):
            async with lock as held:
                tokens.append(held.fencing_token)
                assert await lock.locked()
                assert not (await lock.try_acquire()).allowed
                with pytest.raises(LockHeld):
                    await lock.acquire(timeout=0)
            assert not await lock.locked()
        assert tokens == sorted(tokens)
        assert len(set(tokens)) == 3

    run(test)


def test_lock_decision_releases_at_the_end_of_its_block() -> None:
    async def test(client: AsyncClient, clock: FakeClock) -> None:
        lock = client.lock("job")
        decision = await lock.try_acquire()
        assert decision.token is not None
        with pytest.raises(ValueError, match="boom"):
            async with decision:
                raise ValueError("boom")
        assert not await lock.locked()

    run(test)


def test_lock_retries_with_backoff_then_refuses() -> None:
    async def test(client: AsyncClient, clock: FakeClock) -> None:
        lock = client.lock("busy", ttl=30)
        held = await lock.acquire()
        with pytest.raises(LockHeld):
            await lock.acquire(retries=2, backoff=0.001)
        await held.release()

    run(test)


def test_an_expired_lock_is_lost_and_extend_says_so() -> None:
    async def test(client: AsyncClient, clock: FakeClock) -> None:
        lock = client.lock("short", ttl=1, renew=False)
        held = await lock.acquire(timeout=0)
        assert await held.extend(5)
        clock.advance(6)
        assert not await held.extend(raise_on_lost=False)
        with pytest.raises(LockLost):
            await held.release()

    run(test)


def test_the_heartbeat_renews_held_leases_and_reports_lost_ones() -> None:
    async def test(client: AsyncClient, clock: FakeClock) -> None:
        backend = client.backend
        kept = await client.lock("kept", ttl=3).acquire()
        gone = await client.lock("gone", ttl=3).acquire()
        assert len(backend.heartbeat) == 2
        clock.advance(2)
        assert await backend.heartbeat.beat() == []  # both renewed for 3 s from now
        clock.advance(2)
        assert await client.lock("kept").locked()
        assert isinstance(backend, AsyncMemoryBackend)
        backend.memory.state.leases.pop(gone.op.key)  # taken away behind our back
        assert await backend.heartbeat.beat() == [gone.op]
        assert gone.lost
        assert not kept.lost
        await kept.release()
        assert len(backend.heartbeat) == 0
        assert not await gone.release(raise_on_lost=False)

    run(test)


def test_a_waiter_is_woken_by_a_release() -> None:
    async def test(client: AsyncClient, clock: FakeClock) -> None:
        lock = client.lock("wake", ttl=30)
        holder = await lock.acquire()
        waiter = asyncio.ensure_future(lock.acquire(timeout=10))
        await asyncio.sleep(0)
        await holder.release()
        held = await waiter  # the holder's lease outlasts the timeout: only a wake-up fits
        assert held.fencing_token is not None
        assert holder.fencing_token is not None
        assert held.fencing_token > holder.fencing_token
        await held.release()

    run(test)


# ---------------------------------------------------------------- semaphore


def test_semaphore_caps_holders_and_follows_a_changed_limit() -> None:
    async def test(client: AsyncClient, clock: FakeClock) -> None:
        sem = client.semaphore("heavy", limit=2)
        first, second = await sem.acquire(), await sem.acquire()
        with pytest.raises(ConcurrencyLimitReached):
            await sem.acquire(timeout=0)
        sem.limit = 3
        async with sem.acquire(timeout=0) as third:
            assert third.fencing_token is None
        for held in (first, second):
            await held.release()

        async def double(n: int) -> int:
            return 2 * n

        assert await sem.run(double, 21) == 42
        assert await sem(double)(4) == 8
        async with sem:
            assert (await sem.try_acquire()).allowed

    run(test)


# ---------------------------------------------------------------- breaker


async def fail() -> None:
    raise ConnectionError("down")


def test_breaker_trips_refuses_and_closes_after_a_probe() -> None:
    async def test(client: AsyncClient, clock: FakeClock) -> None:
        breaker = client.circuit_breaker("partner", consecutive_failures=2, open_for=30)
        for _ in range(2):
            with pytest.raises(ConnectionError):
                await breaker.call(fail)
        assert await breaker.state() == "open"
        assert await breaker.is_open()
        with pytest.raises(CircuitOpen) as refused:
            async with breaker:
                pytest.fail("an open breaker ran the block")
        assert refused.value.retry_after == pytest.approx(30.0)
        clock.advance(30)
        assert await breaker.state() == "half_open"
        async with breaker:  # the probe succeeds
            pass
        assert await breaker.state() == "closed"

    run(test)


def test_breaker_block_records_its_exception_and_admin_actions_apply() -> None:
    async def test(client: AsyncClient, clock: FakeClock) -> None:
        breaker = client.circuit_breaker("db", consecutive_failures=1)

        @breaker
        async def ok() -> str:
            return "ok"

        assert await ok() == "ok"
        with pytest.raises(KeyError):
            async with breaker:
                raise KeyError("x")
        assert await breaker.state() == "open"
        await breaker.force_close()
        assert await breaker.state() == "closed"
        await breaker.force_open()
        assert await breaker.state() == "forced_open"
        await breaker.disable()
        assert await breaker.state() == "disabled"
        await breaker.reset()
        assert await breaker.state() == "closed"
        decision = await breaker.try_acquire()
        async with decision:
            pass

    run(test)


# ---------------------------------------------------------------- sharing with sync


def test_quota_counts_per_window_resets_and_follows_a_run_time_allowance() -> None:
    async def test(client: AsyncClient, clock: FakeClock) -> None:
        sms = client.quota("sms", "2/day", key="{phone}")
        assert [(await sms.try_acquire(key="+44")).allowed for _ in range(3)] == [
            True,
            True,
            False,
        ]
        refused = await sms.try_acquire(key="+44")
        assert refused.retry_after == pytest.approx(86_400 - 1_000_000.0 % 86_400)
        with pytest.raises(RateLimited):
            await sms.acquire(key="+44")
        assert await sms.remaining(key="+49") == 2
        clock.advance(refused.retry_after)  # midnight UTC: a new window
        assert await sms.remaining(key="+44") == 2
        async with sms.acquire(key="+44") as taken:
            assert taken.remaining == 1
        assert isinstance(client.backend, AsyncMemoryBackend)
        taskguard.Client(client.backend.memory).set_quota("sms", "5/day")  # shared state
        assert await sms.remaining(key="+44") == 4

    run(test)


def test_a_sync_client_on_the_same_memory_backend_shares_everything() -> None:
    sync = taskguard.connect("memory://")

    async def main() -> None:
        client = taskguard.aio.connect(sync.backend)
        assert isinstance(client.backend, AsyncMemoryBackend)
        assert client.keys is sync.keys
        assert (await client.rate_limiter("api", "1/m").try_acquire()).allowed
        assert not sync.rate_limiter("api", "1/m").try_acquire().allowed
        held = sync.lock("doc").acquire()
        assert not (await client.lock("doc").try_acquire()).allowed
        held.release()
        async with client.lock("doc"):
            assert sync.lock("doc").locked()
        await client.aclose()

    asyncio.run(main())


# ---------------------------------------------------------------- connect


def test_connect_resolves_urls_like_the_sync_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKGUARD_PREFIX", "svc")
    client = taskguard.aio.connect("redis://:s3cret@localhost:1/0")
    assert client.keys.prefix == "svc"
    assert "s3cret" not in repr(client)
    assert taskguard.aio.connect("memory://", prefix="p").keys.prefix == "p"
    with pytest.raises(ValueError, match="unsupported backend URL"):
        taskguard.aio.connect("http://x")


def test_outage_policies_decide_while_redis_is_unreachable() -> None:
    async def main() -> dict[str, Any]:
        # Nothing listens on port 1: every call is refused at once.
        async with taskguard.aio.connect("redis://127.0.0.1:1/0", prefix="x") as client:
            allowed = await client.rate_limiter("a", "1/s").try_acquire()
            local = client.rate_limiter("l", "1/m", on_outage="local")
            locals_ = [(await local.try_acquire()).allowed for _ in range(2)]
            with pytest.raises(BackendUnavailable):
                await client.rate_limiter("d", "1/s", on_outage="deny").acquire()
            with pytest.raises(BackendUnavailable):
                await client.lock("l").try_acquire()
            call = await client.circuit_breaker("b").call(asyncio.sleep, 0, "ran")
            return {"allowed": allowed, "local": locals_, "call": call}

    result = asyncio.run(main())
    assert result["allowed"].allowed
    assert result["allowed"].degraded
    assert result["local"] == [True, False]
    assert result["call"] == "ran"
