"""The process heartbeat: one renewal call for every lease, lost leases reported once.

Rounds are driven by hand with ``beat()`` on a memory backend and a fake clock. The
background thread is stopped first (registering a lease starts it), so no round runs
behind the test's back. The thread itself is tested against a dead Redis.
"""

import logging
import threading
from collections.abc import Callable, Iterator, Sequence

import pytest

import taskguard
from taskguard.backend.ops import LeaseOp
from taskguard.clock import FakeClock
from taskguard.errors import BackendUnavailable
from taskguard.heartbeat import MIN_INTERVAL, Heartbeat, heartbeat_for
from taskguard.testing import wait_until

DEAD_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1


class RecordingBackend(taskguard.MemoryBackend):
    """A memory backend that records its renew calls and can run a hook before one."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.renewals: list[int] = []
        self.before_renew: Callable[[], None] | None = None

    def renew(self, ops: Sequence[LeaseOp]) -> list[bool]:
        if self.before_renew is not None:
            hook, self.before_renew = self.before_renew, None
            hook()
        self.renewals.append(len(ops))
        return super().renew(ops)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(clock: FakeClock) -> Iterator[RecordingBackend]:
    backend = RecordingBackend(clock)
    yield backend
    heartbeat_for(backend).stop()


def take(backend: taskguard.Backend, name: str, ttl: float = 10.0, owner: str = "me") -> LeaseOp:
    lease = LeaseOp(backend.keys.lock(name), owner=owner, ttl=ttl)
    assert backend.admit([lease]).allowed
    return lease


def register(
    heartbeat: Heartbeat, *leases: LeaseOp, on_lost: Callable[[LeaseOp], None] | None = None
) -> list[int]:
    handles = [heartbeat.add(lease, on_lost) for lease in leases]
    heartbeat.stop()  # rounds are driven by hand from here on
    return handles


def test_beat_renews_every_lease_in_one_call(backend: RecordingBackend, clock: FakeClock) -> None:
    leases = [take(backend, f"r{i}") for i in range(3)]
    register(heartbeat_for(backend), *leases)
    backend.renewals.clear()
    clock.advance(8)
    assert heartbeat_for(backend).beat() == []
    assert backend.renewals == [3]
    clock.advance(8)  # 16 s after the take: alive only because of the renewal
    assert [backend.owner(lease.key) for lease in leases] == ["me"] * 3


def test_beat_without_leases_calls_nothing(backend: RecordingBackend) -> None:
    assert heartbeat_for(backend).beat() == []
    assert backend.renewals == []


def test_interval_is_a_third_of_the_shortest_ttl(backend: RecordingBackend) -> None:
    heartbeat = heartbeat_for(backend)
    assert heartbeat.interval() == pytest.approx(1 / 3)  # nothing held
    register(heartbeat, take(backend, "long", ttl=30))
    assert heartbeat.interval() == pytest.approx(10)
    [short] = register(heartbeat, take(backend, "short", ttl=9))
    assert heartbeat.interval() == pytest.approx(3)
    register(heartbeat, take(backend, "tiny", ttl=0.06))
    assert heartbeat.interval() == MIN_INTERVAL
    heartbeat.remove(short)
    heartbeat.remove(999)  # unknown handles are ignored
    assert len(heartbeat) == 2


def test_lost_lease_is_reported_once_and_forgotten(
    backend: RecordingBackend, clock: FakeClock
) -> None:
    lost: list[LeaseOp] = []
    kept, stolen = take(backend, "kept", ttl=30), take(backend, "stolen", ttl=5)
    register(heartbeat_for(backend), kept, stolen, on_lost=lost.append)
    clock.advance(6)
    take(backend, "stolen", owner="thief")
    assert heartbeat_for(backend).beat() == [stolen]
    assert lost == [stolen]
    assert len(heartbeat_for(backend)) == 1
    assert heartbeat_for(backend).beat() == []
    assert lost == [stolen]
    assert backend.owner(stolen.key) == "thief"  # a renewal never touches the new owner


def test_callback_errors_do_not_propagate(
    backend: RecordingBackend, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(lease: LeaseOp) -> None:
        raise RuntimeError("callback bug")

    kept, gone = take(backend, "kept", ttl=30), take(backend, "gone", ttl=5)
    register(heartbeat_for(backend), gone, kept, on_lost=explode)
    clock.advance(6)
    assert heartbeat_for(backend).beat() == [gone]
    assert "lease-lost callback failed" in caplog.text
    clock.advance(20)  # 26 s: kept was renewed in the same round
    assert backend.owner(kept.key) == "me"


def test_backend_outage_propagates_from_beat_and_keeps_leases() -> None:
    backend = taskguard.connect(DEAD_URL).backend
    heartbeat = Heartbeat(backend)
    register(heartbeat, LeaseOp("tg:{tg}:lock:x", owner="me", ttl=10))
    with pytest.raises(BackendUnavailable):
        heartbeat.beat()
    assert len(heartbeat) == 1


def test_thread_survives_an_outage(caplog: pytest.LogCaptureFixture) -> None:
    backend = taskguard.connect(DEAD_URL).backend
    heartbeat = Heartbeat(backend)
    caplog.set_level(logging.WARNING, logger="taskguard.heartbeat")
    heartbeat.add(LeaseOp("tg:{tg}:lock:x", owner="me", ttl=0.3))  # a round every 0.1 s

    def failures() -> int:
        return sum("lease renewal failed" in r.getMessage() for r in caplog.records)

    try:
        wait_until(lambda: failures() >= 2, timeout=10)  # it kept trying after the first
        thread = heartbeat._thread
        assert thread is not None
        assert thread.is_alive()
    finally:
        heartbeat.stop()
    assert not thread.is_alive()


def test_stop_ends_the_thread_and_add_restarts_it(backend: RecordingBackend) -> None:
    heartbeat = heartbeat_for(backend)
    heartbeat.add(take(backend, "a"))
    first = heartbeat._thread
    assert first is not None
    assert first.is_alive()
    heartbeat.stop()
    assert not first.is_alive()
    heartbeat.stop()  # idempotent
    heartbeat.add(take(backend, "b"))
    second = heartbeat._thread
    assert second is not None
    assert second is not first
    assert second.is_alive()


def test_a_lease_released_during_a_round_is_not_reported_lost(
    backend: RecordingBackend,
) -> None:
    lost: list[LeaseOp] = []
    lease = take(backend, "ends")
    [handle] = register(heartbeat_for(backend), lease, on_lost=lost.append)

    def task_ends_now() -> None:  # what release_run does, in the round's window
        heartbeat_for(backend).remove(handle)
        assert backend.release([lease]) == [True]

    backend.before_renew = task_ends_now
    heartbeat_for(backend).beat()
    assert lost == []


def test_add_right_after_stop_keeps_renewing() -> None:
    backend = RecordingBackend(FakeClock())
    heartbeat = heartbeat_for(backend)
    gate, in_round = threading.Event(), threading.Event()

    def hold_the_round() -> None:
        in_round.set()
        gate.wait(5)

    backend.before_renew = hold_the_round
    heartbeat.add(take(backend, "a", ttl=0.3))  # the thread enters a round within 0.1 s
    assert in_round.wait(5)
    heartbeat.stop(timeout=0)
    heartbeat.add(take(backend, "b", ttl=0.3))
    gate.set()
    try:
        # The held round renewed "a" alone; a later round renews both: still renewing.
        wait_until(lambda: 2 in backend.renewals, timeout=10)
        thread = heartbeat._thread
        assert thread is not None
        assert thread.is_alive()
    finally:
        heartbeat.stop()
