"""A rate limit's pause on both backends: the Lua op (kind ``rlp`` in lib/gcra.lua) and its
memory mirror keep one contract.

On Redis time is real, so durations are short and the assertions are bounds.
"""

from __future__ import annotations

import time

import pytest

from taskguard import RateLimit, RateLimiter
from taskguard.backend.ops import PauseOp

from .harness import REDIS_ONLY, Contract

#: On Redis a call takes real time between the pause and the check.
SLACK = 0.05


def counted_down(value: float, expected: float, since: float) -> bool:
    """``value`` is a wait of ``expected`` seconds from a moment at or after ``since``
    (``time.monotonic()``), counted down by the real time gone since: on Redis, time
    passes between the call that set a deadline and the call that reports it, as long as
    a busy machine makes it; on memory (a fake clock) none does."""
    gone = time.monotonic() - since
    return expected - gone - 1e-3 <= value <= expected + 1e-3


def limiter(contract: Contract, rate: str = "20/s", **options: object) -> RateLimiter:
    return RateLimiter(contract.backend, RateLimit(rate, name="partner-api", **options))


def test_a_pause_refuses_calls_until_it_ends(contract: Contract) -> None:
    # 5/s: after the pause the next call is 200 ms away, far more than a busy machine
    # takes between the two calls below (at 20/s, 50 ms, it once did).
    api = limiter(contract, "5/s", burst=4)
    assert api.try_acquire(key="acme").allowed
    since = time.monotonic()
    paused = api.pause("acme", 0.4)
    assert counted_down(paused.retry_after, 0.4, since)
    assert not paused.degraded
    denied = api.try_acquire(key="acme")
    assert not denied.allowed
    assert counted_down(denied.retry_after, 0.4, since)  # not 3 tokens (the burst) earlier
    assert api.try_acquire(key="globex").allowed
    contract.elapse(0.41)
    assert api.try_acquire(key="acme").allowed
    assert not api.try_acquire(key="acme").allowed  # resumes at the steady rate


def test_a_pause_never_shortens_a_longer_backlog(contract: Contract) -> None:
    api = limiter(contract, "1/m")
    since = time.monotonic()
    assert api.try_acquire().allowed  # the next call is due in 60 s
    assert counted_down(api.pause(None, 1).retry_after, 60, since)
    assert counted_down(api.try_acquire().retry_after, 60, since)
    since = time.monotonic()
    assert counted_down(api.pause(None, 90).retry_after, 90, since)
    assert counted_down(api.pause(None, 0).retry_after, 90, since)


def test_refused_calls_reserve_their_slots_from_the_end_of_the_pause(contract: Contract) -> None:
    spec = RateLimit("2/s", name="partner-api")
    since = time.monotonic()
    RateLimiter(contract.backend, spec).pause(None, 5)
    op = spec.op(contract.backend.keys)
    slots = [contract.backend.admit([op], reserve_within=30) for _ in range(3)]
    assert all(slot.reserved for slot in slots)
    for slot, expected in zip(slots, [5.0, 5.5, 6.0], strict=True):
        assert counted_down(slot.retry_after, expected, since)


def test_a_pause_op_beside_a_rate_op_in_one_call(contract: Contract) -> None:
    # The op list of one script may hold both kinds of lib/gcra.lua (loaded once).
    spec = RateLimit("10/s", name="partner-api")
    keys = contract.backend.keys
    admission = contract.backend.admit(
        [spec.op(keys, "a"), PauseOp(key=keys.rate_limit("partner-api", "b"), seconds=2.0)]
    )
    assert admission.allowed
    assert admission.tokens[1] == pytest.approx(2_000_000, abs=SLACK * 1e6)
    assert not contract.backend.admit([spec.op(keys, "b")]).allowed


def test_observe_pauses_until_the_reset(contract: Contract) -> None:
    api = limiter(contract)
    assert not api.observe("acme", remaining=3, reset_after=5)
    since = time.monotonic()
    paced = api.observe("acme", remaining=3, reset_after=6, pace=True)
    assert counted_down(paced.retry_after, 2.0, since)
    since = time.monotonic()
    assert counted_down(api.observe("acme", remaining=0, reset_after=5).retry_after, 5.0, since)
    assert counted_down(api.try_acquire(key="acme").retry_after, 5.0, since)


@REDIS_ONLY
def test_a_paused_bucket_expires_with_its_pause(contract: Contract) -> None:
    assert contract.client is not None
    limiter(contract, "10/s", burst=3).pause("acme", 2)
    key = contract.backend.keys.rate_limit("partner-api", "acme")
    # The pause plus the burst's tolerance (2 x 0.1 s), then the key is gone by itself.
    assert 2100 <= contract.client.pttl(key) <= 2201
