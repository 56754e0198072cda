"""Backoff math (full jitter, capped) and the sink breaker's states."""

from __future__ import annotations

import pytest

from taskguard.drain.backoff import SinkBreaker, backoff_delay


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(0, 0.1), (1, 0.2), (2, 0.4), (5, 3.2), (9, 30.0), (500, 30.0)]
)
def test_ceiling_doubles_up_to_the_maximum(attempt: int, ceiling: float) -> None:
    assert backoff_delay(attempt, 0.1, 30.0, rand=lambda: 0.999999) == pytest.approx(
        ceiling, rel=1e-5
    )
    assert backoff_delay(attempt, 0.1, 30.0, rand=lambda: 0.0) == 0.0


def test_full_jitter_spreads_over_the_whole_range() -> None:
    delays = [backoff_delay(3, 0.1, 30.0) for _ in range(2000)]
    assert all(0 <= d < 0.8 for d in delays)
    assert min(delays) < 0.1
    assert max(delays) > 0.7


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_then_probes_once() -> None:
    clock = Clock()
    breaker = SinkBreaker(threshold=3, open_for=5.0, clock=clock)
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state == "closed"
    assert breaker.wait_time() == 0.0
    breaker.record_failure()
    assert breaker.state == "open"
    assert breaker.wait_time() == pytest.approx(5.0)
    clock.now += 5.0
    assert breaker.state == "half_open"
    assert breaker.wait_time() == 0.0  # this caller is the probe
    assert breaker.wait_time() > 0  # the others wait for its outcome
    breaker.record_failure()  # the probe failed: open again
    assert breaker.state == "open"
    assert breaker.wait_time() == pytest.approx(5.0)
    clock.now += 5.0
    assert breaker.wait_time() == 0.0
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.wait_time() == 0.0


def test_a_success_resets_the_failure_count() -> None:
    breaker = SinkBreaker(threshold=2, clock=Clock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == "closed"
