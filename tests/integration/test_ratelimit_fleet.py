"""A global rate limit across real worker processes on a real Redis.

Two prefork workers with two pool processes each (four processes in all) share one fleet.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from .conftest import Fleet

CAPS = {
    "on_deferral_exhausted": None,
    "max_deferrals": 1,
    "reserve_within": 0,
    "max_deferral_delay": 0.2,
}


def cap_settings(policy: str) -> dict[str, Any]:
    return {**CAPS, "on_deferral_exhausted": policy}


@pytest.fixture(scope="module")
def fleet(fleet_factory: Callable[..., Fleet]) -> Fleet:
    settings = {
        "deferral_jitter": 0.02,
        "tasks": {
            "*.capped": cap_settings("fail"),
        },
    }
    fleet = fleet_factory(settings=settings)
    return fleet.start(count=2, concurrency=2)


def max_in_window(times: list[float], window: float) -> int:
    """The most events in any interval of length ``window``."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] > window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_global_rate_holds_across_workers(fleet: Fleet) -> None:
    count = 100
    results = [fleet.send("steady", i) for i in range(count)]
    assert sorted(r.get(timeout=60) for r in results) == list(range(count))
    runs = [r for r in fleet.records("runs") if r["name"].endswith(".steady")]
    assert len(runs) == count  # each task ran exactly once

    starts = sorted(r["t"] for r in runs)
    # GCRA at 20/s with burst 1: at most 1 + 20 * W starts in any window W. One extra
    # start of slack covers the gap between admission and the moment a task records.
    for window in (0.25, 1.0, 2.0):
        assert max_in_window(starts, window) <= 1 + 20 * window + 1, window
    achieved = (len(starts) - 1) / (starts[-1] - starts[0])
    assert achieved <= 20 * 1.03
    assert achieved >= 20 * 0.8  # it holds the rate, it does not starve it

    workers = {r["worker"] for r in runs}
    pids = {r["pid"] for r in runs}
    assert len(workers) == 2, "both worker processes must have taken part"
    assert len(pids) >= 2


def test_deferral_keeps_task_id_and_retries(fleet: Fleet) -> None:
    runs = [r for r in fleet.records("runs") if r["name"].endswith(".steady")]
    assert runs, "depends on test_global_rate_holds_across_workers having run"
    assert {r["retries"] for r in runs} == {0}
    deferred = [r for r in runs if r["deferrals"] > 0]
    assert len(deferred) > len(runs) // 2  # 100 tasks at 20/s: most had to wait
    deferrals = [d for d in fleet.records("deferred") if d["name"].endswith(".steady")]
    # Each deferral re-published the same id, which then ran exactly once.
    assert {d["id"] for d in deferrals} <= {r["id"] for r in runs}
    assert Counter(r["id"] for r in runs).most_common(1)[0][1] == 1
    # Reservations: a denied task comes back at its slot and runs without contesting
    # again; only one delivered late contests a second time. Without reservations every
    # task would re-contest each slot: hundreds of deferrals for these 100 tasks. How many
    # come back late depends on the machine's load (a start-up transient, see "came back
    # late" in docs/deferral.md: re-published tasks queue behind the unread backlog); 78%
    # and 80-95% were seen here, so the bound leaves room for a loaded CI machine.
    histogram = Counter(r["deferrals"] for r in runs)
    print("deferrals per task:", dict(histogram))
    assert histogram[1] >= 0.6 * len(deferred)
    assert len(deferrals) < 1.5 * len(runs)
    assert all(d["reserved"] for d in deferrals)


def test_per_argument_keys_are_independent(fleet: Fleet) -> None:
    customers = ["ann", "bob", "cyd"]
    results = [fleet.send("per_customer", c, i) for i in range(12) for c in customers]
    for result in results:
        result.get(timeout=60)
    runs = [r for r in fleet.records("runs") if r["name"].endswith(".per_customer")]
    by_customer: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        by_customer[run["customer_id"]].append(run["t"])
    assert sorted(by_customer) == customers
    for times in by_customer.values():
        assert len(times) == 12
        assert max_in_window(times, 1.0) <= 1 + 4 + 1
    # Independent buckets: all three customers ran in the same seconds, so the fleet as a
    # whole went well past one customer's 4/s.
    everything = [t for times in by_customer.values() for t in times]
    assert max_in_window(everything, 1.0) > 4 + 2


@pytest.mark.parametrize(
    "kind", ["success", "failure", "retry", "ignore", "reject", "soft_time_limit"]
)
def test_guard_released_on_every_outcome(fleet: Fleet, kind: str) -> None:
    result = fleet.send("outcome", kind)
    expected = {
        "success": ["success"],
        "failure": ["failure"],
        "retry": ["retry", "success"],
        "ignore": ["ignored"],
        "reject": ["rejected"],
        "soft_time_limit": ["soft_time_limit"],
    }[kind]
    released = fleet.wait_for(
        "released",
        lambda recs: len([r for r in recs if r["id"] == result.id]) >= len(expected),
        timeout=30,
    )
    assert [r["outcome"] for r in released if r["id"] == result.id] == expected
    if kind == "retry":
        assert result.get(timeout=30) == "retry"
        runs = [r for r in fleet.records("runs") if r["id"] == result.id]
        assert [r["retries"] for r in runs] == [0, 1]  # self.retry() does count


def test_deferral_cap_fails_the_task(fleet: Fleet) -> None:
    from taskguard import DeferralExhausted

    first = fleet.send("capped", "fail")
    assert first.get(timeout=30) == "fail"
    second = fleet.send("capped", "fail")
    with pytest.raises(DeferralExhausted, match="deferred 1 times"):
        second.get(timeout=30)
    exhausted = fleet.wait_for("exhausted", lambda recs: any(r["id"] == second.id for r in recs))
    assert [r["policy"] for r in exhausted if r["id"] == second.id] == ["fail"]
    deferred = [d for d in fleet.records("deferred") if d["id"] == second.id]
    assert len(deferred) == 1  # deferred once (the cap), then failed on the next denial
