"""The Redis-outage path without a server: fail fast, apply each guard's policy.

Recovery from a real outage is in tests/contract/test_outage.py."""

import pytest

import taskguard
from taskguard.backend.outage import OutageBreaker
from taskguard.errors import BackendUnavailable
from taskguard.guards.admission import admit
from taskguard.guards.ratelimit import RateLimit

DEAD_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connections are refused


class Ticker:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_fails_fast_then_probes() -> None:
    clock = Ticker()
    breaker = OutageBreaker(cooldown=1.0, max_cooldown=3.0, clock=clock)
    breaker.before_call()  # closed: no-op
    assert breaker.record_failure() == 1.0
    assert breaker.is_open
    with pytest.raises(BackendUnavailable) as info:
        breaker.before_call()
    assert info.value.retry_after == pytest.approx(1.0)
    clock.now = 1.0
    breaker.before_call()  # the probe goes through...
    with pytest.raises(BackendUnavailable):
        breaker.before_call()  # ...while everyone else keeps failing fast
    assert breaker.record_failure() == 2.0  # doubles
    assert breaker.record_failure() == 3.0  # capped
    breaker.record_success()
    assert not breaker.is_open
    breaker.before_call()
    breaker.record_failure()
    breaker.reset()
    assert not breaker.is_open


def test_dead_redis_raises_backend_unavailable_then_fails_fast() -> None:
    backend = taskguard.connect(DEAD_URL, outage_cooldown=5.0).backend
    limiter_op = RateLimit("1/s", name="x").op(backend.keys)
    with pytest.raises(BackendUnavailable, match="unreachable") as first:
        backend.admit([limiter_op])
    assert isinstance(first.value.__cause__, Exception)
    assert backend.breaker.is_open
    # "failing fast" is raised by the breaker before any socket is touched.
    for _ in range(3):
        with pytest.raises(BackendUnavailable, match="failing fast"):
            backend.admit([limiter_op])
    with pytest.raises(BackendUnavailable):
        backend.time()
    with pytest.raises(BackendUnavailable):
        backend.ping()


@pytest.mark.parametrize(
    ("policy", "allowed", "degraded"),
    [("allow", True, True), ("deny", False, True), ("local", True, True)],
)
def test_outage_policies(policy: str, allowed: bool, degraded: bool) -> None:
    backend = taskguard.connect(DEAD_URL).backend
    spec = RateLimit("1/m", name=f"pol-{policy}", on_outage=policy)
    outcome = admit(backend, [spec], [spec.op(backend.keys)])
    assert outcome.admission.allowed is allowed
    assert outcome.degraded is degraded
    if not allowed:
        assert outcome.admission.retry_after > 0
        assert outcome.admission.denied == 0


def test_local_policy_limits_in_process() -> None:
    backend = taskguard.connect(DEAD_URL).backend
    spec = RateLimit("1/m", name="local-only", on_outage="local")
    allow = RateLimit("1/m", name="allow-one", on_outage="allow")
    ops = [allow.op(backend.keys), spec.op(backend.keys)]
    assert admit(backend, [allow, spec], ops).admission.allowed
    second = admit(backend, [allow, spec], ops).admission
    assert not second.allowed
    assert second.denied == 1  # the index of the local guard in the caller's list
    assert 50 < second.retry_after <= 60


def test_standalone_limiter_follows_policy() -> None:
    backend = taskguard.connect(DEAD_URL).backend
    assert taskguard.connect(backend).rate_limiter("a", "1/s").try_acquire().degraded
    denied = taskguard.connect(backend).rate_limiter("d", "1/s", on_outage="deny").try_acquire()
    assert not denied.allowed
    assert denied.degraded


def test_blocking_acquire_under_deny_policy_raises_backend_unavailable() -> None:
    backend = taskguard.connect(DEAD_URL).backend
    with pytest.raises(BackendUnavailable, match="on_outage='deny'"):
        taskguard.connect(backend).rate_limiter("d", "1/s", on_outage="deny").acquire()
