"""A global rate limit across real worker processes on a real Redis.

Two prefork workers with two pool processes each (four processes in all) share one fleet.
Every test runs alone or in any order: what two tests both read (the ``steady`` batch) is
a module fixture, sent once, and each test picks its own records out by task id or name.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
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


STEADY_RATE = 20.0  # tasks/s: RateLimit("20/s") on apps/guarded.py's ``steady``, burst 1


@dataclass
class Batch:
    """What a batch of tasks recorded: its runs, and the deferrals of its tasks."""

    runs: list[dict[str, Any]]
    deferrals: list[dict[str, Any]]


@pytest.fixture(scope="module")
def steady(fleet: Fleet) -> Batch:
    """100 ``steady`` tasks (20/s), sent once for the tests that read them, in any order.

    Only this fixture sends ``steady``, so its bucket starts empty whatever ran before.
    """
    count = 100
    results = [fleet.send("steady", i) for i in range(count)]
    assert sorted(r.get(timeout=60) for r in results) == list(range(count))
    ids = {r.id for r in results}
    runs = [r for r in fleet.records("runs") if r["id"] in ids]
    # By name, not by id: a deferral that re-published under a new id must show up.
    deferrals = [d for d in fleet.records("deferred") if d["name"].endswith(".steady")]
    return Batch(runs, deferrals)


@pytest.mark.both_brokers
def test_global_rate_holds_across_workers(steady: Batch) -> None:
    runs = steady.runs
    assert len(runs) == 100  # each task ran exactly once

    # The window the fleet was busy: from its first start to its last, both stamped with
    # Redis TIME when the task ran (the workers' clocks and the test's play no part).
    starts = sorted(r["t"] for r in runs)
    busy = starts[-1] - starts[0]
    # Upper bounds, strict whatever the load (load only ever slows a fleet down). GCRA at
    # 20/s with burst 1: at most 1 + 20 * W starts in any window W. One extra start of
    # slack covers the gap between admission and the moment a task records.
    for window in (0.25, 1.0, 2.0):
        assert max_in_window(starts, window) <= 1 + STEADY_RATE * window + 1, window
    achieved = (len(starts) - 1) / busy
    assert achieved <= STEADY_RATE * 1.03

    # Lower bound: the limiter holds the rate, it does not starve it. Every slot it grants
    # is either used by a start or wasted by a task that comes back after its reserved slot
    # (re-published tasks queue behind the unread backlog; on a loaded machine, for longer).
    # Such a task contests again and is deferred again, so a wasted slot is a reserved
    # deferral beyond the one each deferred run used. The fleet could start a task at every
    # slot but those: that is what it must achieve. (test_deferral_keeps_task_id_and_retries
    # bounds how many come back late.)
    reserved = sum(1 for d in steady.deferrals if d["reserved"])
    wasted = reserved - sum(1 for r in runs if r["deferrals"] > 0)
    granted = (len(starts) - 1 + wasted) / busy
    print(
        f"achieved {achieved:.2f}/s over {busy:.2f} s busy; {wasted} reserved slots wasted "
        f"by late returns; granted {granted:.2f}/s of {STEADY_RATE:g}/s"
    )
    assert granted >= STEADY_RATE * 0.95

    workers = {r["worker"] for r in runs}
    pids = {r["pid"] for r in runs}
    assert len(workers) == 2, "both worker processes must have taken part"
    assert len(pids) >= 2


@pytest.mark.both_brokers
def test_deferral_keeps_task_id_and_retries(steady: Batch) -> None:
    runs = steady.runs
    assert {r["retries"] for r in runs} == {0}
    deferred = [r for r in runs if r["deferrals"] > 0]
    assert len(deferred) > len(runs) // 2  # 100 tasks at 20/s: most had to wait
    deferrals = steady.deferrals
    # Each deferral re-published the same id, which then ran exactly once.
    assert {d["id"] for d in deferrals} <= {r["id"] for r in runs}
    assert Counter(r["id"] for r in runs).most_common(1)[0][1] == 1
    # Reservations: a denied task comes back at its slot and runs without contesting
    # again; only one delivered late contests a second time. Without reservations every
    # task would re-contest each slot: hundreds of deferrals for these 100 tasks. How many
    # come back late depends on the machine's load (a start-up transient, see "came back
    # late" in docs/deferral.md: re-published tasks queue behind the unread backlog): on a
    # quiet machine 80-95% of the deferred ran after one deferral, under a load average
    # of 7 on 2 cores 52-58%, so only the total is asserted.
    histogram = Counter(r["deferrals"] for r in runs)
    print("deferrals per task:", dict(histogram))
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
