"""A rate or a cap set at run time (`taskguard limit set`) holds for every worker at once."""

from __future__ import annotations

from collections.abc import Callable

import taskguard

from .conftest import Fleet
from .test_concurrency_fleet import max_overlap
from .test_parking_fleet import assert_exactly_once, runs

APP = "tests.integration.apps.parked"


def test_a_limit_set_at_run_time_applies_to_the_whole_fleet(
    fleet_factory: Callable[..., Fleet],
) -> None:
    """The task's own limit is 10/m: 12 tasks would take 66 s. With 50/s set in Redis
    while the workers run, all 12 pass within seconds, on both workers, and the
    fleet-wide rate still holds (no two starts closer than the new interval allows)."""
    fleet = fleet_factory(app=APP).start(count=2, concurrency=2)
    client = taskguard.connect(fleet.guard_url, prefix=fleet.prefix)
    try:
        client.set_limit("live", "5/s")
        results = [fleet.send("live", i) for i in range(12)]
        assert sorted(r.get(timeout=30) for r in results) == list(range(12))
    finally:
        client.close()
    starts = sorted(r["start"] for r in fleet.records("runs") if r["name"] == "live")
    assert len(starts) == 12
    # 5/s with burst 1: at most one start per 0.2 s interval, fleet-wide.
    span = starts[-1] - starts[0]
    assert span >= 11 * 0.2 - 0.05, starts


def test_a_cap_lowered_at_run_time_holds_across_the_fleet(
    fleet_factory: Callable[..., Fleet],
) -> None:
    """The task's own cap is 4, and the 2 workers have 4 processes: 6 tasks of 0.3 s
    would run 4 at a time. With the cap set to 1 in Redis, they run one at a time across
    both workers (refused tasks park and are handed back), each exactly once."""
    fleet = fleet_factory(app=APP).start(count=2, concurrency=2)
    client = taskguard.connect(fleet.guard_url, prefix=fleet.prefix)
    try:
        client.set_cap("livecap", 1)
        results = [fleet.send("capped", i, 0.3) for i in range(6)]
        assert sorted(r.get(timeout=30) for r in results) == list(range(6))
    finally:
        client.close()
    records = runs(fleet, "capped")
    assert_exactly_once(records, {r.id for r in results})
    assert max_overlap([(r["start"], r["end"]) for r in records]) == 1
