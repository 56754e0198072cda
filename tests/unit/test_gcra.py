"""GCRA math on the memory backend with a fake clock: no sleeping, exact numbers."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import taskguard
from taskguard.backend.ops import RateOp
from taskguard.clock import FakeClock
from taskguard.errors import ConfigurationError, RateLimited
from taskguard.guards.ratelimit import RateLimit
from taskguard.guards.ratelimiter import RateLimiter


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(clock: FakeClock) -> taskguard.MemoryBackend:
    return taskguard.MemoryBackend(clock=clock)


def limiter(backend: taskguard.Backend, rate: str, burst: int | None = None) -> RateLimiter:
    return taskguard.connect(backend).rate_limiter("test", rate, burst=burst)


def test_burst_then_evenly_spaced(backend: taskguard.MemoryBackend, clock: FakeClock) -> None:
    lim = limiter(backend, "10/s", burst=3)
    decisions = [lim.try_acquire() for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    assert decisions[3].retry_after == pytest.approx(0.1)
    clock.advance(0.1)
    assert lim.try_acquire().allowed
    assert not lim.try_acquire().allowed


def test_retry_after_is_exact(backend: taskguard.MemoryBackend, clock: FakeClock) -> None:
    lim = limiter(backend, "4/s")
    assert lim.try_acquire()
    denied = lim.try_acquire()
    assert denied.retry_after == pytest.approx(0.25)
    clock.advance(denied.retry_after - 0.001)
    assert not lim.try_acquire()  # a hair too early
    clock.advance(0.001)
    assert lim.try_acquire()


def test_cost_takes_several_tokens(backend: taskguard.MemoryBackend, clock: FakeClock) -> None:
    lim = limiter(backend, "10/s", burst=5)
    assert lim.try_acquire(cost=4).remaining == 1
    denied = lim.try_acquire(cost=2)
    assert not denied
    assert denied.retry_after == pytest.approx(0.1)
    clock.advance(0.1)
    assert lim.try_acquire(cost=2)


def test_cost_above_burst_is_refused(backend: taskguard.MemoryBackend) -> None:
    with pytest.raises(ValueError, match="exceeds burst"):
        limiter(backend, "10/s", burst=2).try_acquire(cost=3)
    with pytest.raises(ConfigurationError, match="exceeds burst"):
        RateLimit("10/s", burst=2, cost=3)


def test_keys_are_independent(backend: taskguard.MemoryBackend) -> None:
    lim = limiter(backend, "1/m")
    assert lim.try_acquire(key="a")
    assert lim.try_acquire(key="b")
    assert not lim.try_acquire(key="a")


def test_several_limits_all_or_nothing(backend: taskguard.MemoryBackend, clock: FakeClock) -> None:
    keys = backend.keys
    per_second = RateOp(keys.rate_limit("s"), interval=0.1, burst=10)
    per_minute = RateOp(keys.rate_limit("m"), interval=30.0, burst=2)
    assert backend.admit([per_second, per_minute]).allowed
    assert backend.admit([per_second, per_minute]).allowed
    denied = backend.admit([per_second, per_minute])
    assert not denied.allowed
    assert denied.denied == 1
    assert denied.retry_after == pytest.approx(30.0)
    # The per-second bucket was not charged for the refused call: 8 more fit right now.
    assert all(backend.admit([per_second]).allowed for _ in range(8))
    assert not backend.admit([per_second]).allowed


def test_reservation_takes_the_future_slot(
    backend: taskguard.MemoryBackend, clock: FakeClock
) -> None:
    op = RateOp(backend.keys.rate_limit("r"), interval=0.5, burst=1)
    assert backend.admit([op]).allowed
    first = backend.admit([op], reserve_within=10)
    second = backend.admit([op], reserve_within=10)
    assert (first.reserved, first.retry_after) == (True, pytest.approx(0.5))
    assert (second.reserved, second.retry_after) == (True, pytest.approx(1.0))
    too_far = backend.admit([op], reserve_within=1.2)
    assert not too_far.reserved
    assert too_far.retry_after == pytest.approx(1.5)
    clock.advance(1.5)
    assert backend.admit([op]).allowed  # the two reservations used 0.5 and 1.0 exactly


def test_blocking_acquire_sleeps_to_the_slot(
    backend: taskguard.MemoryBackend, clock: FakeClock
) -> None:
    lim = limiter(backend, "2/s")
    start = clock.time()
    for _ in range(3):
        lim.acquire()
    assert clock.time() - start == pytest.approx(1.0)
    with pytest.raises(RateLimited) as info:
        lim.acquire(timeout=0.1)
    assert info.value.retry_after == pytest.approx(0.5)


def test_context_manager_and_decorator(backend: taskguard.MemoryBackend, clock: FakeClock) -> None:
    lim = taskguard.connect(backend).rate_limiter("deco", "1/s")
    with lim as decision:
        assert decision.allowed
    with lim.acquire(key="x") as decision:
        assert decision.key == "x"

    keyed = taskguard.RateLimiter(backend, RateLimit("1/s", key="{user}", name="keyed"))
    calls = []

    @keyed
    def send(user: str, text: str) -> None:
        calls.append((user, clock.time()))

    send("ann", "hi")
    send("bob", "hi")
    send("ann", "again")
    assert [c[0] for c in calls] == ["ann", "bob", "ann"]
    assert calls[2][1] - calls[0][1] == pytest.approx(1.0)
    assert calls[1][1] == calls[0][1]  # bob's bucket is his own


def test_bucket_expires_when_full_again(backend: taskguard.MemoryBackend, clock: FakeClock) -> None:
    lim = limiter(backend, "10/s", burst=5)
    lim.try_acquire(cost=5)
    clock.advance(0.6)
    assert lim.try_acquire(cost=5)
    assert backend.state.values  # the bucket exists while not full
    clock.advance(0.6)
    backend.admit([])  # no-op
    lim.try_acquire(key="other")
    assert backend.state.value(backend.keys.rate_limit("test"), clock.time()) is None


# --- GCRA invariants, property-based --------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 50),
    burst=st.integers(1, 10),
    steps=st.lists(
        st.tuples(st.floats(0, 0.5, allow_nan=False), st.integers(1, 3)), min_size=1, max_size=80
    ),
)
def test_gcra_never_exceeds_rate_plus_burst(
    limit: int, burst: int, steps: list[tuple[float, int]]
) -> None:
    """In any window of length W, granted tokens <= burst + W * rate (GCRA conformance)."""
    clock = FakeClock()
    backend = taskguard.MemoryBackend(clock=clock)
    op_interval = 1.0 / limit
    granted: list[tuple[float, int]] = []
    for gap, cost in steps:
        clock.advance(gap)
        if cost > burst:
            continue
        op = RateOp(backend.keys.rate_limit("p"), interval=op_interval, burst=burst, cost=cost)
        result = backend.admit([op])
        if result.allowed:
            granted.append((clock.time(), cost))
        else:
            assert result.retry_after > 0
    for i, (start, _) in enumerate(granted):
        total = 0
        for t, cost in granted[i:]:
            total += cost
            assert total <= burst + (t - start) * limit + 1e-6


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 50),
    burst=st.integers(1, 10),
    gaps=st.lists(st.floats(0, 0.3, allow_nan=False), min_size=1, max_size=40),
)
def test_denial_retry_after_is_exact(limit: int, burst: int, gaps: list[float]) -> None:
    """After a denial, waiting exactly ``retry_after`` admits; a little less does not."""
    clock = FakeClock()
    backend = taskguard.MemoryBackend(clock=clock)
    op = RateOp(backend.keys.rate_limit("e"), interval=1.0 / limit, burst=burst)
    for gap in gaps:
        clock.advance(gap)
        result = backend.admit([op])
        if result.allowed:
            continue
        retry_after = result.retry_after
        if retry_after > 2e-6:
            clock.advance(retry_after - 1e-6)
            assert not backend.admit([op]).allowed
            clock.advance(1e-6)
        else:
            clock.advance(retry_after)
        assert backend.admit([op]).allowed


def test_cost_from_a_callable_is_checked() -> None:
    backend = taskguard.MemoryBackend()
    spec = RateLimit("1/s", burst=3, cost=lambda n: n, name="c")
    assert spec.task_ops(backend.keys, (2,), {}, "t")[0].cost == 2  # type: ignore[union-attr]
    for bad in (0, -1, 4):
        with pytest.raises(ValueError, match="cost"):
            spec.task_ops(backend.keys, (bad,), {}, "t")


def test_rate_limiter_factory_key_template() -> None:
    clock = FakeClock()
    backend = taskguard.MemoryBackend(clock=clock)
    limiter = taskguard.connect(backend).rate_limiter("per-user", "1/m", key="{user}")
    seen = []

    @limiter
    def greet(user: str) -> None:
        seen.append((user, clock.time()))

    greet("a")
    greet("b")
    assert seen[0][1] == seen[1][1]
