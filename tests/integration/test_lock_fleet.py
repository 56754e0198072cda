"""Locks across real worker processes on a real Redis: exclusivity, crashes, long tasks,
stolen leases."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections import defaultdict
from collections.abc import Callable

import pytest
import redis

from taskguard.testing import wait_until

from .conftest import Fleet


@pytest.fixture(scope="module")
def fleet(fleet_factory: Callable[..., Fleet]) -> Fleet:
    return fleet_factory().start(count=2, concurrency=2)


def runs(fleet: Fleet, name: str, **match: object) -> list[dict]:
    return [
        r
        for r in fleet.records("runs")
        if r["name"].endswith(f".{name}") and all(r.get(k) == v for k, v in match.items())
    ]


def test_exclusive_under_load(fleet: Fleet) -> None:
    """4 processes, 500 tasks over 20 keys: no two runs of a key overlap, and fencing
    tokens strictly increase per key in start order."""
    results = [fleet.send("exclusive", f"k{i % 20}", i) for i in range(500)]
    assert sorted(r.get(timeout=120) for r in results) == list(range(500))
    records = fleet.records("locked")
    assert len(records) == 500
    by_key: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_key[record["key"]].append(record)
    assert len(by_key) == 20
    for key, key_runs in by_key.items():
        key_runs.sort(key=lambda r: r["start"])
        for before, after in itertools.pairwise(key_runs):
            assert after["start"] >= before["end"], f"{key}: runs overlap"
            assert after["token"] > before["token"], f"{key}: fencing token did not increase"
    assert len({r["pid"] for r in records}) >= 3, "the load must spread over the processes"


def test_crash_recovery(fleet_factory: Callable[..., Fleet]) -> None:
    """kill -9 the holder of a ttl=5 lock: the next task for the key starts within
    ttl + 1 s, with a larger fencing token."""
    crash = fleet_factory().start(count=2, concurrency=1)
    crash.send("hold5", "crash-key", 60)
    [first] = crash.wait_for("runs", lambda recs: len(recs) >= 1, timeout=30)
    holder = crash.worker_of(first["worker"])
    holder.kill()
    killed_at = crash.server_time()
    crash.send("hold5", "crash-key", 0)
    starts = crash.wait_for(
        "runs", lambda recs: len([r for r in recs if r["phase"] == "start"]) >= 2, timeout=30
    )
    second = [r for r in starts if r["phase"] == "start"][1]
    assert second["worker"] != first["worker"]
    assert second["t"] - killed_at <= 5 + 1
    assert second["token"] > first["token"]


def test_long_task_keeps_its_lock(fleet: Fleet) -> None:
    """A 15 s task with ttl=5 (three TTLs) holds its lock throughout, through the heartbeat."""
    long_run = fleet.send("hold5", "long-key", 15)
    fleet.wait_for("runs", lambda recs: any(r.get("key") == "long-key" for r in recs))
    attempts = []
    for _ in range(6):  # one rival every 2.5 s for the whole run
        attempts.append(fleet.send("skip5", "long-key"))
        time.sleep(2.5)  # the pace of the rivals: spread over the whole run, not a burst
    assert long_run.get(timeout=30) is False  # lease_lost stayed False
    ids = {a.id for a in attempts}
    conflicts = fleet.wait_for(
        "conflict", lambda recs: len([r for r in recs if r["id"] in ids]) >= len(ids), 30
    )
    assert {r["action"] for r in conflicts if r["id"] in ids} == {"skip"}
    assert not runs(fleet, "skip5", key="long-key")
    [start, end] = runs(fleet, "hold5", key="long-key")
    assert end["t"] - start["t"] >= 15
    assert not [r for r in fleet.records("lost") if r["key"].endswith("long-key")]


def test_stolen_lease_is_reported_and_never_released_by_its_old_owner(
    fleet_factory: Callable[..., Fleet], redis_url: str
) -> None:
    """Freeze a holder past its TTL: another run takes the lock; the old holder gets
    lease_lost, and its release leaves the new owner's lock alone."""
    stall = fleet_factory().start(count=2, concurrency=1)
    first = stall.send("hold2", "stolen", 5)
    [started] = stall.wait_for("runs", lambda recs: len(recs) >= 1, timeout=30)
    # Freeze the whole worker (its heartbeat thread stops with the pool process, and its
    # main process fetches nothing more, so the rival goes to the other worker).
    frozen = stall.worker_of(started["worker"])
    os.killpg(frozen.pid, signal.SIGSTOP)
    client = redis.Redis.from_url(redis_url)
    try:
        # Nobody renews it now: the lease expires after its ttl (2 s).
        wait_until(
            lambda: not list(client.scan_iter(f"{stall.prefix}:*:lock:hold2:stolen")),
            timeout=10,
            interval=0.05,
        )
        second = stall.send("hold2", "stolen", 6)
        stall.wait_for("runs", lambda recs: any(r["id"] == second.id for r in recs), 30)
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)
    assert first.get(timeout=30) is True  # the old holder saw lease_lost
    lost = stall.wait_for("lost", lambda recs: any(r["id"] == first.id for r in recs), 10)
    assert all(r["key"].endswith(":lock:hold2:stolen") for r in lost)
    # The new holder's lock survived the old holder's release.
    [lock_key] = list(client.scan_iter(f"{stall.prefix}:*:lock:hold2:stolen"))
    assert client.get(lock_key).decode().startswith(f"{second.id}:")
    client.close()
    assert second.get(timeout=30) is False
    tokens = {r["id"]: r["token"] for r in stall.records("runs") if r["phase"] == "start"}
    assert tokens[second.id] > tokens[first.id]
