"""A rate set at run time (`taskguard limit set`) holds for every worker at once."""

from __future__ import annotations

from collections.abc import Callable

import taskguard

from .conftest import Fleet

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
