"""DistributedLock and the Lock spec, on the memory backend with a fake clock (a lease only
expires when the test moves time). Waits are checked for correctness (woken by a release,
well before their timeout), not for speed. The same lock on Redis (wake-ups, expiry, the
heartbeat in real time) is in tests/contract/test_lock.py.
"""

import inspect
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import taskguard
from taskguard.celery._settings import Settings
from taskguard.clock import FakeClock
from taskguard.errors import ConfigurationError, LockHeld, LockLost
from taskguard.guards.lock import DistributedLock, HeldLock, Lock
from taskguard.heartbeat import heartbeat_for


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(clock: FakeClock) -> Iterator[taskguard.MemoryBackend]:
    backend = taskguard.MemoryBackend(clock=clock)
    yield backend
    heartbeat_for(backend).stop()


def release_later(held: HeldLock, delay: float = 0.2) -> threading.Timer:
    timer = threading.Timer(delay, held.release)
    timer.start()
    return timer


def test_try_acquire_decision_carries_token_and_lease(backend: taskguard.Backend) -> None:
    lock = taskguard.connect(backend).lock("report", ttl=30)
    first = lock.try_acquire()
    assert first.allowed
    assert first.key == "report"
    assert isinstance(first.lease, HeldLock)
    assert first.token == first.lease.fencing_token > 0
    denied = lock.try_acquire()
    assert not denied
    assert (denied.token, denied.lease) == (None, None)
    assert denied.retry_after == pytest.approx(30)
    assert first.lease.release() is True
    second = lock.try_acquire()
    assert second.token is not None
    assert second.token > first.token


def test_decision_as_context_manager_releases(backend: taskguard.Backend) -> None:
    lock = taskguard.connect(backend).lock("cm", ttl=30)
    with lock.try_acquire() as decision:
        assert decision.allowed
        assert lock.locked()
        with lock.try_acquire() as refused:
            assert not refused
        assert lock.locked()  # leaving a refused decision releases nothing
    assert not lock.locked()


def test_with_lock_releases_on_exit_and_on_error(backend: taskguard.Backend) -> None:
    lock = taskguard.connect(backend).lock("with", ttl=30)
    with lock as held:
        assert isinstance(held, HeldLock)
        assert held.fencing_token > 0
        assert lock.locked()
    assert not lock.locked()
    with pytest.raises(RuntimeError), lock:
        raise RuntimeError("boom")
    assert not lock.locked()


def test_decorator_holds_the_lock_for_each_call(backend: taskguard.Backend) -> None:
    lock = taskguard.connect(backend).lock("deco", ttl=30)

    @lock
    def work(x: int) -> tuple[int, bool]:
        """Doc."""
        return x, lock.locked()

    assert work(3) == (3, True)
    assert not lock.locked()
    assert (work.__name__, work.__doc__) == ("work", "Doc.")


def test_retries_back_off_then_fail(backend: taskguard.Backend) -> None:
    holder = taskguard.connect(backend).lock("busy", ttl=30).acquire()
    lock = taskguard.connect(backend).lock("busy", ttl=30)
    started = time.monotonic()
    with pytest.raises(LockHeld) as info:
        lock.acquire(retries=2, backoff=0.04)
    # Two pauses of at least half of 0.04 and 0.08 s (jitter adds up to the other half).
    assert time.monotonic() - started >= 0.06
    assert info.value.retry_after == pytest.approx(30)
    assert info.value.key == "busy"
    assert holder.release()


def test_retries_succeed_once_released(backend: taskguard.Backend) -> None:
    holder = taskguard.connect(backend).lock("soon", ttl=30).acquire()
    timer = release_later(holder, 0.1)
    held = taskguard.connect(backend).lock("soon", ttl=30).acquire(retries=20, backoff=0.02)
    timer.join()
    assert held.fencing_token > holder.fencing_token


def test_timeout_expires_with_lock_held(backend: taskguard.Backend) -> None:
    holder = taskguard.connect(backend).lock("t", ttl=30).acquire()
    started = time.monotonic()
    with pytest.raises(LockHeld):
        taskguard.connect(backend).lock("t", ttl=30).acquire(timeout=0.3)
    assert time.monotonic() - started >= 0.25
    assert holder.release()


def test_release_after_takeover_raises_and_spares_the_new_owner(
    backend: taskguard.Backend, clock: FakeClock
) -> None:
    late = taskguard.connect(backend).lock("job", ttl=10, renew=False).acquire()
    clock.advance(11)
    other = taskguard.connect(backend).lock("job", ttl=10, renew=False)
    taker = other.acquire(timeout=0)
    with pytest.raises(LockLost) as info:
        late.release()
    assert info.value.key == backend.keys.lock("job")
    assert late.release(raise_on_lost=False) is False
    assert other.locked()
    assert backend.owner(backend.keys.lock("job")) == taker.owner
    assert taker.release() is True


def test_extend(backend: taskguard.Backend, clock: FakeClock) -> None:
    lock = taskguard.connect(backend).lock("ext", ttl=10, renew=False)
    held = lock.acquire()
    clock.advance(8)
    assert held.extend() is True
    clock.advance(8)  # 16 s after the acquire
    assert lock.locked()
    assert held.extend(30) is True
    clock.advance(25)
    assert lock.locked()
    clock.advance(10)
    assert not lock.locked()
    with pytest.raises(LockLost):
        held.extend()
    assert held.extend(raise_on_lost=False) is False


def test_locked_follows_the_holder(backend: taskguard.Backend, clock: FakeClock) -> None:
    lock = taskguard.connect(backend).lock("state", ttl=5, renew=False)
    assert not lock.locked()
    held = lock.acquire()
    assert lock.locked()
    assert taskguard.connect(backend).lock("state").locked()  # any handle on the same name sees it
    assert not taskguard.connect(backend).lock("other").locked()
    clock.advance(6)
    assert not lock.locked()
    assert held.release(raise_on_lost=False) is False


# ---------------------------------------------------------------- the Lock spec


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ttl": 0}, "ttl"),
        ({"ttl": -1}, "ttl"),
        ({"ttl": "60"}, "ttl"),
        ({"queue_ttl": 0}, "queue_ttl"),
        ({"mode": "forever"}, "mode"),
        ({"on_conflict": "retry"}, "on_conflict"),
        ({"on_duplicate": "ignore"}, "on_duplicate"),
        ({"wait": -1}, "wait"),
        ({"wait": True}, "wait"),
        ({"name": ""}, "name"),
        ({"on_outage": "maybe"}, "on_outage"),
        ({"key": 5}, "key"),
    ],
)
def test_lock_spec_validation(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Lock(**kwargs)
    assert info.value.field == field


def test_distributed_lock_validates_ttl(backend: taskguard.Backend) -> None:
    with pytest.raises(ConfigurationError) as info:
        DistributedLock(backend, "x", ttl=0)
    assert info.value.field == "ttl"


@pytest.mark.parametrize(
    ("mode", "runtime", "at_publish"),
    [
        ("while_executing", True, False),
        ("until_executing", False, True),
        ("until_executed", False, True),
        ("until_executing+while_executing", True, True),
    ],
)
def test_modes(mode: str, runtime: bool, at_publish: bool) -> None:
    spec = Lock(mode=mode)
    assert (spec.runtime, spec.at_publish) == (runtime, at_publish)


def order_task(order_id: int, note: str = "") -> None: ...


def resolve(entry: dict[str, Any]) -> None:
    Settings.from_mapping({"tasks": {"t": entry}}).for_task("t", (), inspect.signature(order_task))


def settings_error(entry: dict[str, Any]) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as info:
        resolve(entry)
    return info.value


@pytest.mark.parametrize(
    ("lock", "field"),
    [
        ({"ttl": 60, "bogus": 1}, "lock.bogus"),
        ({"ttl": 0}, "lock.ttl"),
        ({"mode": "always"}, "lock.mode"),
        ({"wait": -2}, "lock.wait"),
        ("{order_id}", "lock"),
    ],
)
def test_lock_settings_name_task_and_field(lock: Any, field: str) -> None:
    error = settings_error({"lock": lock})
    assert (error.task, error.field) == ("t", field)


def test_lock_key_naming_a_missing_argument() -> None:
    error = settings_error({"lock": {"key": "{customer_id}"}})
    assert error.task == "t"
    assert "customer_id" in str(error)
    assert error.field == "lock.key"


def test_lock_settings_build_and_override_the_class_lock() -> None:
    settings = Settings.from_mapping(
        {"tasks": {"t": {"lock": {"key": "{order_id}", "ttl": 5, "mode": "until_executed"}}}}
    )
    class_guards = (Lock(ttl=99),)
    [lock] = settings.for_task("t", class_guards, inspect.signature(order_task)).guards
    assert isinstance(lock, Lock)
    assert (lock.ttl, lock.mode, lock.name) == (5.0, "until_executed", "t")
    assert lock.bucket((7,), {}) == "7"
    removed = Settings.from_mapping({"tasks": {"t": {"lock": None}}}).for_task("t", class_guards)
    assert removed.guards == ()
    outage = Settings.from_mapping({"on_outage": {"lock": "allow"}}).for_task("t", class_guards)
    assert outage.guards[0].on_outage == "allow"


def test_lock_names_are_public() -> None:
    for name in ("Lock", "DistributedLock", "HeldLock", "LockLost", "AlreadyQueued"):
        assert name in taskguard.__all__, name
    assert taskguard.Lock is Lock
