"""The process-local breaker shared by the Redis outage breaker and the drain's sink
breaker: threshold, growing cooldown, and the two ways others wait for the probe."""

from __future__ import annotations

import math

import pytest

from taskguard.backend.cooldown import CooldownBreaker
from taskguard.backend.outage import OutageBreaker
from taskguard.drain.backoff import SinkBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_opens_at_the_threshold_and_doubles_past_it() -> None:
    clock = Clock()
    breaker = CooldownBreaker(threshold=2, cooldown=1.0, max_cooldown=3.0, clock=clock)
    assert breaker.record_failure() == 0.0
    assert breaker.state == "closed"
    assert breaker.wait_time() == 0.0
    assert breaker.record_failure() == 1.0
    assert breaker.state == "open"
    assert breaker.is_open
    assert breaker.wait_time() == pytest.approx(1.0)
    assert breaker.record_failure() == 2.0
    assert breaker.record_failure() == 3.0  # capped
    breaker.record_success()
    assert breaker.state == "closed"
    assert not breaker.is_open


def test_without_probe_poll_others_wait_one_cooldown_then_probe_again() -> None:
    clock = Clock()
    breaker = CooldownBreaker(cooldown=1.0, max_cooldown=8.0, clock=clock)
    breaker.record_failure()
    clock.now += 1.0
    assert breaker.state == "half_open"
    assert breaker.wait_time() == 0.0  # the probe
    clock.now += 0.25
    assert breaker.wait_time() == pytest.approx(0.75)
    assert breaker.is_open
    clock.now += 0.75  # the probe never reported: the next caller probes
    assert breaker.wait_time() == 0.0


def test_with_probe_poll_others_check_back_until_the_outcome() -> None:
    clock = Clock()
    breaker = CooldownBreaker(threshold=1, cooldown=5.0, probe_poll=0.1, clock=clock)
    breaker.record_failure()
    clock.now += 5.0
    assert breaker.wait_time() == 0.0  # the probe
    clock.now += 60.0
    assert breaker.wait_time() == pytest.approx(0.1)  # however long it takes
    breaker.record_failure()
    assert breaker.wait_time() == pytest.approx(5.0)  # fixed: no max_cooldown


def test_the_two_uses_are_configurations_of_it() -> None:
    outage = OutageBreaker(cooldown=0.5, max_cooldown=10.0)
    assert (outage.threshold, outage.cooldown, outage.max_cooldown) == (1, 0.5, 10.0)
    assert outage.probe_poll is None
    sink = SinkBreaker(threshold=5, open_for=5.0)
    assert (sink.threshold, sink.open_for, sink.max_cooldown, sink.probe_poll) == (5, 5.0, 5.0, 0.1)
    assert isinstance(outage, CooldownBreaker)
    assert isinstance(sink, CooldownBreaker)


def test_many_failures_do_not_overflow() -> None:
    breaker = CooldownBreaker(cooldown=1.0, max_cooldown=math.inf)
    for _ in range(2000):
        breaker.record_failure()
    assert breaker.current_cooldown() == 2.0**62
