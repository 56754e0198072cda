"""Semaphore (fleet-wide, standalone) and ConcurrencyControl (in-process, threads and asyncio).

The semaphore runs on the memory backend on a fake clock (a slot only expires when the
test moves time); the same semaphore on Redis (wake-ups, expiry, the heartbeat in real
time) is in tests/contract/test_semaphore.py. Waits are checked for correctness (woken by
a release, well before their timeout), not for speed.
"""

import asyncio
import inspect
import threading
import time
from collections.abc import Iterator

import pytest

import taskguard
from taskguard import ConcurrencyControl, ConcurrencyLimitReached, HeldLease
from taskguard.clock import FakeClock
from taskguard.heartbeat import heartbeat_for


@pytest.fixture
def backend() -> Iterator[taskguard.MemoryBackend]:
    backend = taskguard.MemoryBackend(clock=FakeClock())
    yield backend
    heartbeat_for(backend).stop()


def test_try_acquire_up_to_the_limit(backend: taskguard.Backend) -> None:
    sem = taskguard.connect(backend).semaphore("api", limit=2, ttl=30)
    first, second = sem.try_acquire(), sem.try_acquire()
    assert first.allowed
    assert second.allowed
    assert isinstance(first.lease, HeldLease)
    assert first.lease.fencing_token is None
    assert first.key == "api"
    refused = sem.try_acquire()
    assert not refused
    assert refused.lease is None
    assert refused.retry_after == pytest.approx(30)
    assert first.lease.release() is True
    with sem.try_acquire() as third:  # the freed slot; the decision releases it
        assert third.allowed
        assert not sem.try_acquire()
    assert sem.try_acquire().allowed


def test_with_semaphore_nests_and_releases_on_error(backend: taskguard.Backend) -> None:
    sem = taskguard.connect(backend).semaphore("cm", limit=2)
    with sem as outer:
        assert isinstance(outer, HeldLease)
        with sem:
            assert not sem.try_acquire()
        with sem.try_acquire() as again:
            assert again.lease is not None  # the inner slot came back
    with pytest.raises(RuntimeError), sem:
        raise RuntimeError("boom")
    assert (
        taskguard.connect(backend).semaphore("cm", limit=1).try_acquire().allowed
    )  # both given back


def test_run_and_decorator_hold_a_slot_per_call(backend: taskguard.Backend) -> None:
    sem = taskguard.connect(backend).semaphore("deco", limit=1)

    @sem
    def work(x: int) -> tuple[int, bool]:
        """Doc."""
        return x, sem.try_acquire().allowed

    assert work(3) == (3, False)
    assert sem.run(lambda a, b=0: a + b, 1, b=2) == 3
    assert (work.__name__, work.__doc__) == ("work", "Doc.")
    assert sem.try_acquire().allowed


def test_decorated_function_keeps_its_timeout_argument(backend: taskguard.Backend) -> None:
    sem = taskguard.connect(backend).semaphore("kw", limit=1)

    @sem
    def fetch(url: str, timeout: float = 5.0) -> float:
        return timeout

    assert fetch("https://example.invalid", timeout=3.0) == 3.0


def test_timeout_raises_with_the_holders_expiry(backend: taskguard.Backend) -> None:
    sem = taskguard.connect(backend).semaphore("busy", limit=1, ttl=30)
    holder = sem.acquire()
    started = time.monotonic()
    with pytest.raises(ConcurrencyLimitReached) as info:
        sem.acquire(timeout=0.3)
    assert time.monotonic() - started >= 0.25
    assert info.value.key == "busy"
    assert info.value.retry_after == pytest.approx(30)
    assert holder.release()


def test_retries_back_off_then_raise(backend: taskguard.Backend) -> None:
    sem = taskguard.connect(backend).semaphore("retry", limit=1, ttl=30)
    holder = sem.acquire()
    started = time.monotonic()
    with pytest.raises(ConcurrencyLimitReached):
        sem.acquire(retries=2, backoff=0.04)
    assert time.monotonic() - started >= 0.06  # pauses of at least 0.02 and 0.04 s
    timer = threading.Timer(0.1, holder.release)
    timer.start()
    assert sem.acquire(retries=20, backoff=0.02).release()
    timer.join()


def test_limit_changed_on_the_object(backend: taskguard.Backend) -> None:
    sem = taskguard.connect(backend).semaphore("live", limit=1)
    first = sem.acquire(timeout=0)
    assert not sem.try_acquire()
    sem.limit = 2
    second = sem.acquire(timeout=0)
    sem.limit = 1  # lowered while two hold slots: nobody new until fewer than one
    assert first.release()
    assert not sem.try_acquire()
    assert second.release()
    assert sem.try_acquire().allowed


# ---------------------------------------------------------------- ConcurrencyControl


def test_threads_run_at_most_max_concurrent_at_once() -> None:
    control = ConcurrencyControl(max_concurrent=2)
    lock, gate, entered = threading.Lock(), threading.Event(), threading.Semaphore(0)
    active, peak = [0], [0]

    def work(n: int) -> int:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        entered.release()
        gate.wait(10)
        with lock:
            active[0] -= 1
        return n

    results: list[int] = []
    threads = [
        threading.Thread(target=lambda n=n: results.append(control.run(work, n))) for n in range(5)
    ]
    for thread in threads:
        thread.start()
    assert entered.acquire(timeout=5)
    assert entered.acquire(timeout=5)
    # A third call must not start: give it 0.1 s to (wrongly) enter, returning early if it does.
    assert not entered.acquire(timeout=0.1)
    assert active[0] == 2
    gate.set()
    for thread in threads:
        thread.join(10)
    assert (peak[0], sorted(results)) == (2, [0, 1, 2, 3, 4])


def test_threads_queue_timeout_raises() -> None:
    control = ConcurrencyControl(max_concurrent=1, queue_timeout=0.2)
    gate, inside = threading.Event(), threading.Event()

    @control
    def hold() -> None:
        inside.set()
        gate.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(5)
    started = time.monotonic()
    with pytest.raises(ConcurrencyLimitReached):
        control.run(lambda: None)
    assert time.monotonic() - started >= 0.15
    gate.set()
    holder.join(10)
    assert control.run(lambda: "free") == "free"


async def _peak_of(control: ConcurrencyControl, calls: int) -> tuple[int, list[int]]:
    gate = asyncio.Event()
    active, peak = [0], [0]

    @control
    async def work(n: int) -> int:
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        await gate.wait()
        active[0] -= 1
        return n

    assert inspect.iscoroutinefunction(work)
    running = asyncio.gather(*(work(n) for n in range(calls)))
    for _ in range(10):
        await asyncio.sleep(0)
    assert active[0] == control.max_concurrent
    gate.set()
    return peak[0], await running


def test_asyncio_runs_at_most_max_concurrent_at_once_across_event_loops() -> None:
    control = ConcurrencyControl(max_concurrent=2, queue_timeout=5)
    # Each asyncio.run is a new event loop; a semaphore bound to the first would fail.
    for _ in range(2):
        assert asyncio.run(_peak_of(control, 5)) == (2, [0, 1, 2, 3, 4])


def test_asyncio_queue_timeout_raises() -> None:
    control = ConcurrencyControl(max_concurrent=1, queue_timeout=0.1)

    async def main() -> str:
        gate = asyncio.Event()
        holder = asyncio.ensure_future(control.run_async(gate.wait))
        await asyncio.sleep(0)
        with pytest.raises(ConcurrencyLimitReached):
            await control.run_async(asyncio.sleep, 0)
        gate.set()
        await holder
        return await control.run_async(asyncio.sleep, 0, "free")

    assert asyncio.run(main()) == "free"
