"""Drain metrics arithmetic: recent rate, coalescing ratio, and namespaces added up."""

from __future__ import annotations

import pytest

from taskguard.drain import DrainMetrics
from taskguard.drain.metrics import Throughput


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_is_rows_over_the_recent_window() -> None:
    clock = Clock()
    meter = Throughput(window=10.0, clock=clock)
    clock.now = 20.0
    meter.record(rows=100, records=250)
    clock.now = 25.0
    meter.record(rows=50, records=50)
    snap = meter.snapshot()
    assert snap["rows_per_second"] == pytest.approx(15.0)
    assert snap["rows_written"] == 150
    assert snap["records_acked"] == 300
    assert snap["coalescing_ratio"] == pytest.approx(2.0)
    clock.now = 34.0  # the first batch left the window
    assert meter.snapshot()["rows_per_second"] == pytest.approx(5.0)
    clock.now = 100.0
    assert meter.snapshot()["rows_per_second"] == 0.0
    assert meter.snapshot()["rows_written"] == 150


def test_a_young_pool_divides_by_its_age_not_the_window() -> None:
    clock = Clock()
    meter = Throughput(window=10.0, clock=clock)
    clock.now = 2.0
    meter.record(rows=10, records=10)
    assert meter.snapshot()["rows_per_second"] == pytest.approx(5.0)


def test_nothing_written_has_ratio_one() -> None:
    assert Throughput().snapshot()["coalescing_ratio"] == 1.0


def test_namespaces_add_up() -> None:
    a = DrainMetrics(backlog=3, oldest_age=2.0, pending=1, dead_letters=0)
    b = DrainMetrics(backlog=4, oldest_age=5.0, pending=0, dead_letters=2)
    total = a + b
    assert (total.backlog, total.oldest_age, total.pending, total.dead_letters) == (7, 5.0, 1, 2)
