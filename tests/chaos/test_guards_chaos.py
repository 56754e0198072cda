"""Guards under faults: real worker fleets on a Redis of the test's own, and an auditor.

Each test runs the same mixed load (tests/chaos/apps/audited.py): fenced lock holders on
two keys, a concurrency cap of 2, a rate limit of 5/s with burst 2 sent faster than it
admits. It applies one fault while the load runs, then the auditor checks everything the
runs, the fenced resource and the workers recorded (history.audit_guards): fencing and
lock exclusivity, the cap, the rate limit's windows, lease recovery, no worker crash.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from taskguard.testing import wait_until

from .apps import limits
from .auditor import Kill, Moment
from .harness import ChaosFleet, CrashableRedis, Load, node
from .history import audit_guards

FleetFactory = Callable[..., ChaosFleet]


def mixed(tick: int) -> list[tuple[str, tuple[Any, ...]]]:
    """One 0.1 s tick of the load: per second, one lock holder per key (holding 0.6 s),
    5 runs under the cap (0.25 s each), 8 rate-limited runs (the limit admits 5)."""
    sends: list[tuple[str, tuple[Any, ...]]] = [("limited", ())] if tick % 5 != 4 else []
    if tick % 10 in (0, 5):
        sends.append(("fenced", (f"k{tick % 10 // 5}", 0.6)))
    if tick % 2:
        sends.append(("capped", (0.25,)))
    return sends


Records = list[dict[str, Any]]


def starts(records: Records, after: float, phase: str = "start", **match: Any) -> Records:
    """The records of ``phase`` (runs admitted: ``start``) after ``after`` that match."""
    return [
        r
        for r in records
        if r.get("phase", "start") == phase
        and r["t"] > after
        and all(r.get(k) == v for k, v in match.items())
    ]


def open_holder(fleet: ChaosFleet) -> dict[str, Any] | None:
    """A fenced run holding its lock right now on a worker the test has not killed."""
    records = fleet.records("leases")
    ended = {r["id"] for r in starts(records, 0, phase="end")}
    for r in reversed(starts(records, 0)):
        if r["id"] not in ended and not fleet.was_killed(r["worker"]):
            return r
    return None


def wait_for_every_guard(fleet: ChaosFleet, after: float) -> None:
    """Wait until every guard has admitted runs since ``after``: 2 lock holders, and 10
    runs under the cap and the rate limit (2 s of the limit: its bucket is saturated)."""
    for stream, count in (("leases", 2), ("slots", 10), ("admissions", 10)):
        fleet.wait_for(stream, lambda recs, n=count: len(starts(recs, after)) >= n, timeout=30)


#: The ERROR line a worker logs when Redis refuses writes (docs/outages.md).
OOM_LOGGED = "Redis refuses writes (OOM)"


def worker_logs(fleet: ChaosFleet) -> str:
    return "".join(w.log() for w in fleet.workers)


def test_workers_killed_repeatedly(
    chaos_fleet: FleetFactory, crashable_redis: CrashableRedis
) -> None:
    """kill -9 three lock holders' workers (and their pools) mid-run, starting a
    replacement each time: every lease comes back within ttl + 1 s, and no guard's
    guarantee breaks."""
    fleet = chaos_fleet(crashable_redis.url).start(count=3, concurrency=3)
    kills: list[tuple[str, Kill]] = []
    with Load(fleet, mixed):
        for _ in range(6):  # three kills of a holder; a holder may end before its kill
            holder = wait_until(lambda: open_holder(fleet), timeout=30)
            at = fleet.kill(fleet.worker_of(holder["worker"]))
            fleet.replace()
            leases = fleet.records("leases")
            if any(r["id"] == holder["id"] for r in starts(leases, 0, phase="end")):
                continue  # it ended before the kill landed: not a holder's kill
            key = holder["key"]
            kills.append((node(holder["worker"]), Kill(at, key)))
            fleet.wait_for("leases", lambda recs, k=key, a=at: bool(starts(recs, a, key=k)))
            if len(kills) == 3:
                break
        wait_for_every_guard(fleet, after=kills[-1][1].at)
    assert len(kills) == 3, "the kills must hit lock holders"
    audit_guards(fleet, kills=kills)


def test_lock_holder_frozen_past_its_lease(
    chaos_fleet: FleetFactory, crashable_redis: CrashableRedis
) -> None:
    """SIGSTOP a lock holder past its ttl, then SIGCONT: a rival takes the lock within
    ttl + 1 s with a larger fencing token, the resource refuses the old holder's next
    write, and the old holder is told (lease_lost)."""
    fleet = chaos_fleet(crashable_redis.url)
    first_queue, rival_queue = fleet.queue_named("first"), fleet.queue_named("rival")
    # Each run goes to a worker of its own: a frozen worker cannot take the rival's message.
    fleet.worker(concurrency=1, queues=(first_queue,)).start(wait=False)
    fleet.worker(concurrency=1, queues=(rival_queue,)).start(wait=False)
    for worker in fleet.workers:
        worker.wait_ready(60)
    first = fleet.send_to(first_queue, "fenced", "frozen", 2 * limits.LOCK_TTL)
    [started] = fleet.wait_for("leases", lambda recs: len(recs) >= 1)
    frozen = fleet.worker_of(started["worker"])
    fleet.freeze(frozen)
    try:
        frozen_at = fleet.server_time()
        rival = fleet.send_to(rival_queue, "fenced", "frozen", 0.3)
        fleet.wait_for("leases", lambda recs: bool(starts(recs, 0, phase="end", id=rival)))
    finally:
        fleet.thaw(frozen)
    fleet.wait_for("leases", lambda recs: bool(starts(recs, 0, phase="end", id=first)))
    fleet.wait_for("lost", lambda recs: any(r["id"] == first for r in recs))
    history = audit_guards(fleet, kills=[(node(started["worker"]), Kill(frozen_at, "frozen"))])
    [old, new] = sorted(history.holders_of("frozen"), key=lambda h: h.start)
    assert (old.holder, new.holder) == (first, rival)
    assert old.lost
    assert not new.lost
    assert new.token > old.token
    refused = [w for w in history.writes if not w.accepted]
    assert [(w.holder, w.token) for w in refused] == [(first, old.token)]
    # Reported by the heartbeat, or (as here, when the run ends first) at its release.
    assert re.search(
        r"lease (on )?\S+ (lost: it expired or was taken over|was lost before release)",
        frozen.log(),
    )


def test_guard_redis_killed_and_restarted_from_its_append_only_file(
    chaos_fleet: FleetFactory, crashable_redis: CrashableRedis
) -> None:
    """kill -9 the guards' Redis (appendonly yes, appendfsync always) mid-run and start
    it again 1 s later: the state comes back from the append-only file, so every guard
    holds as if nothing happened; workers apply their outage policies meanwhile."""
    fleet = chaos_fleet(crashable_redis.url).start(count=2, concurrency=3)
    with Load(fleet, mixed):
        wait_for_every_guard(fleet, after=0)
        crashable_redis.kill()
        time.sleep(1.0)  # the outage lasts 1 s
        crashable_redis.start()
        wait_for_every_guard(fleet, after=fleet.server_time())
    audit_guards(fleet)
    assert "taskguard backend unavailable, applying outage policies" in worker_logs(fleet)


def test_guard_redis_flushed_mid_run(
    chaos_fleet: FleetFactory, crashable_redis: CrashableRedis
) -> None:
    """FLUSHDB the guards' Redis while runs hold leases: the guards start over from empty
    state, every run holding a lease across the wipe is told (lease_lost), the fenced
    resource refuses what those runs write after a new holder's token, and each rate
    bucket (the wiped one and the new one) holds the limit."""
    fleet = chaos_fleet(crashable_redis.url).start(count=2, concurrency=3)
    with Load(fleet, mixed):
        wait_for_every_guard(fleet, after=0)
        holder = wait_until(lambda: open_holder(fleet), timeout=30)
        before = fleet.server_time()
        with crashable_redis.client() as client:
            client.flushdb()
        wipe = Moment(before, fleet.server_time())
        wait_for_every_guard(fleet, after=wipe.after)
    fleet.wait_for("lost", lambda recs: any(r["id"] == holder["id"] for r in recs))
    audit_guards(fleet, wipes=[wipe])
    with crashable_redis.client() as client:
        assert list(client.scan_iter(match=f"{fleet.prefix}:*")), "guards re-create their state"


def test_guard_redis_at_maxmemory(
    chaos_fleet: FleetFactory, crashable_redis: CrashableRedis
) -> None:
    """Redis at maxmemory with noeviction (OOM) mid-run: a refused admission is an outage
    for the guards, so each follows its policy (here all deny: the tasks are deferred);
    workers log the OOM as an error of its own, and every guard holds throughout."""
    fleet = chaos_fleet(crashable_redis.url).start(count=2, concurrency=3)
    with Load(fleet, mixed):
        wait_for_every_guard(fleet, after=0)
        with crashable_redis.out_of_memory():
            began = fleet.server_time()
            wait_until(lambda: OOM_LOGGED in worker_logs(fleet), timeout=10)
            time.sleep(1.0)  # the fault lasts 1 s more
            ended = fleet.server_time()
        wait_for_every_guard(fleet, after=fleet.server_time())
    history = audit_guards(fleet)
    # Locks and rate limits admitted nothing while Redis refused writes: their scripts'
    # first write needs memory. (Runs whose slot a reservation paid for before need no
    # admission; a run admitted just before the fault may record its start a moment later,
    # hence the 0.5 s.) A concurrency slot may still be taken: its script's first write
    # is a prune of expired holders, which needs no memory, and Redis lets a script that
    # has written run to its end. The audit above shows the cap held all the same.
    during = [h.holder for h in history.leases if began + 0.5 < h.start < ended] + [
        f"rate-limited run at {a.t:.3f}"
        for a in history.admissions
        if began + 0.5 < a.charged < ended
    ]
    assert not during, f"admitted while Redis refused writes: {during}"
