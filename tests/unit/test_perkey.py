"""Per-key limit values from code: a mapping or a callable per rendered key."""

from __future__ import annotations

import pytest

import taskguard
import taskguard.aio
from taskguard import Concurrency, ConfigurationError, RateLimit
from taskguard.clock import FakeClock
from taskguard.keys import KeySchema

KEYS = KeySchema("tg")


def test_a_rate_limit_takes_each_bucket_s_rate_from_the_table() -> None:
    spec = RateLimit("5/s", key="{tenant}", per_key={"acme": "100/s"}, name="api")
    assert spec.op(KEYS, "acme").interval == pytest.approx(0.01)
    assert spec.op(KEYS, "globex").interval == pytest.approx(0.2)
    assert repr(spec) == "RateLimit('5/s', key='{tenant}', name='api', per_key={'acme': '100/s'})"


def test_a_callable_chooses_per_call_and_none_means_the_guard_s_own() -> None:
    premium = {"acme"}
    spec = Concurrency(2, key="{tenant}", per_key=lambda t: 10 if t in premium else None)
    assert spec.slot_op(KEYS, "acme", "o").limit == 10
    assert spec.slot_op(KEYS, "globex", "o").limit == 2
    premium.add("globex")  # asked again each time
    assert spec.slot_op(KEYS, "globex", "o").limit == 10


def test_a_standalone_limiter_applies_per_key_rates() -> None:
    client = taskguard.connect(taskguard.MemoryBackend(clock=FakeClock()))
    limiter = client.rate_limiter("sms", "1/m", key="{phone}")
    limiter = taskguard.RateLimiter(
        client.backend, RateLimit("1/m", name="sms", burst=3, per_key={"vip": "60/s"})
    )
    assert sum(bool(limiter.try_acquire(key="vip")) for _ in range(5)) == 3
    assert sum(bool(limiter.try_acquire(key="other")) for _ in range(5)) == 3


@pytest.mark.parametrize(
    ("build", "field", "message"),
    [
        (lambda: RateLimit("5/s", per_key={"a": "fast"}), "per_key.a", "expected 'N/s'"),
        (lambda: Concurrency(2, per_key={"a": 0}), "per_key.a", "positive integer"),
        (lambda: Concurrency(2, per_key=[("a", 3)]), "per_key", "mapping of key to value"),
    ],
)
def test_bad_per_key_values_name_the_field(build, field: str, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigurationError) as caught:
        build()
    assert caught.value.field == field
    assert message in str(caught.value)


def test_a_callable_s_bad_value_is_reported_when_it_is_used() -> None:
    spec = Concurrency(2, key="{t}", per_key=lambda t: "ten")
    with pytest.raises(ConfigurationError, match=r"per_key\('x'\)"):
        spec.slot_op(KEYS, "x", "o")


def test_a_quota_takes_each_key_s_allowance_from_the_table() -> None:
    from taskguard import Quota

    spec = Quota("100/day", key="{tenant}", per_key={"acme": 5000}, name="exports")
    assert spec.op(KEYS, "acme").limit == 5000
    assert spec.op(KEYS, "globex").limit == 100


@pytest.mark.parametrize("flavour", ["sync", "asyncio"])
def test_a_standalone_limiter_asks_a_per_key_callable_on_every_call(flavour: str) -> None:
    # Both limiters build their ops through one helper (ratelimiter.limiter_op); the
    # asyncio one used to keep the op built from a callable's first answer for good.
    fast: set[str] = set()
    spec = RateLimit("1/m", name="sms", per_key=lambda k: "60/s" if k in fast else None)
    limiter: taskguard.RateLimiter | taskguard.aio.AsyncRateLimiter
    if flavour == "sync":
        limiter = taskguard.RateLimiter(taskguard.MemoryBackend(clock=FakeClock()), spec)
    else:
        limiter = taskguard.aio.AsyncRateLimiter(
            taskguard.aio.AsyncMemoryBackend(clock=FakeClock()), spec
        )
    assert limiter._op("vip", 1, None).interval == pytest.approx(60.0)
    fast.add("vip")
    assert limiter._op("vip", 1, None).interval == pytest.approx(1 / 60)
