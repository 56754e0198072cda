"""Global concurrency caps across real worker processes on a real Redis."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import pytest

from .conftest import Fleet


@pytest.fixture(scope="module")
def fleet(fleet_factory: Callable[..., Fleet]) -> Fleet:
    return fleet_factory().start(count=3, concurrency=2)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end before a start at the same time)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = current = 0
    for _, step in events:
        current += step
        best = max(best, current)
    return best


def mean_concurrency(intervals: list[tuple[float, float]]) -> float:
    """Busy time summed over the span from the first start to the last end."""
    span = max(e for _, e in intervals) - min(s for s, _ in intervals)
    return sum(e - s for s, e in intervals) / span


def slot_records(fleet: Fleet, name: str) -> list[dict]:
    return [r for r in fleet.records("slots") if r["name"].endswith(f".{name}")]


def test_cap_is_never_exceeded(fleet: Fleet) -> None:
    """6 processes, a cap of 2, 300 tasks: never more than 2 at once."""
    results = [fleet.send("capped_slot", i) for i in range(300)]
    assert sorted(r.get(timeout=120) for r in results) == list(range(300))
    ids = {r.id for r in results}  # test_throughput_near_the_cap sends capped_slot too
    records = [r for r in slot_records(fleet, "capped_slot") if r["id"] in ids]
    assert len(records) == 300
    assert max_overlap([(r["start"], r["end"]) for r in records]) == 2
    assert len({r["pid"] for r in records}) >= 4, "all workers must have competed"


def test_per_key_caps(fleet: Fleet) -> None:
    tenants = [f"t{n}" for n in range(5)]
    results = [fleet.send("tenant_slot", t, i) for i in range(40) for t in tenants]
    for result in results:
        result.get(timeout=120)
    by_tenant: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in slot_records(fleet, "tenant_slot"):
        by_tenant[r["tenant"]].append((r["start"], r["end"]))
    assert sorted(by_tenant) == tenants
    for intervals in by_tenant.values():
        assert len(intervals) == 40
        assert max_overlap(intervals) <= 2
    everything = [i for intervals in by_tenant.values() for i in intervals]
    assert max_overlap(everything) > 2  # the caps are per key, not one shared cap


def test_throughput_near_the_cap(fleet: Fleet) -> None:
    """Cap 2, 200 ms tasks, 6 processes: the cap is used, not starved by deferrals."""
    results = [fleet.send("capped_slot", 1000 + i, 0.2) for i in range(40)]
    for result in results:
        result.get(timeout=120)
    ids = {r.id for r in results}  # test_cap_is_never_exceeded sends capped_slot too
    records = [r for r in slot_records(fleet, "capped_slot") if r["id"] in ids]
    intervals = [(r["start"], r["end"]) for r in records]
    achieved = mean_concurrency(intervals)
    print(f"achieved mean concurrency {achieved:.3f} of cap 2 ({achieved / 2:.1%})")
    assert max_overlap(intervals) == 2
    assert achieved >= 0.9 * 2


@pytest.mark.both_brokers
def test_bounded_wait_wakes_on_release_then_defers(fleet: Fleet) -> None:
    """A waiter takes the slot at the holder's release; past `wait` it defers instead."""
    holder = fleet.send("short_wait_slot", 1, 0.3)
    fleet.wait_for("runs", lambda recs: any(r["id"] == holder.id for r in recs))
    waiter = fleet.send("short_wait_slot", 2, 0.0)  # 0.3 s hold < 0.5 s wait: no deferral
    waiter.get(timeout=30)
    records = {r["i"]: r for r in slot_records(fleet, "short_wait_slot")}
    assert records[2]["deferrals"] == 0
    assert records[2]["start"] >= records[1]["end"]

    long_holder = fleet.send("short_wait_slot", 3, 2.0)  # 2 s hold > 0.5 s wait: defers
    fleet.wait_for("runs", lambda recs: any(r["id"] == long_holder.id for r in recs))
    deferred = fleet.send("short_wait_slot", 4, 0.0)
    deferred.get(timeout=30)
    records = {r["i"]: r for r in slot_records(fleet, "short_wait_slot")}
    assert records[4]["deferrals"] >= 1
    assert records[4]["start"] >= records[3]["end"]


def test_crash_frees_the_slot_within_ttl(fleet_factory: Callable[..., Fleet]) -> None:
    """kill -9 a worker mid-task (lease ttl=5): the slot is back within ttl + 1 s and
    the queue drains completely."""
    crash = fleet_factory().start(count=2, concurrency=1)
    crash.send("crash_slot", 0, 60)
    [first] = crash.wait_for("runs", lambda recs: len(recs) >= 1, timeout=30)
    crash.worker_of(first["worker"]).kill()
    killed_at = crash.server_time()
    rest = [crash.send("crash_slot", i, 0.05) for i in range(1, 6)]
    assert sorted(r.get(timeout=60) for r in rest) == [1, 2, 3, 4, 5]
    starts = sorted(r["t"] for r in crash.records("runs") if r["i"] > 0)
    assert starts[0] - killed_at <= 5 + 1
