"""What a chaos fleet recorded, as the auditor's events, and the guard audit every test runs.

Reads the records of tests/chaos/apps/audited.py (on the broker's Redis, which no fault
touches) and turns them into :mod:`tests.chaos.auditor` events.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .apps import limits
from .auditor import (
    Admission,
    FencedWrite,
    Holding,
    Kill,
    Moment,
    busiest,
    cap_violations,
    crashed_workers,
    fencing_violations,
    overlapping_holders,
    rate_violations,
    slow_recoveries,
    unreported_losses,
)
from .harness import ChaosFleet, node

#: Windows the rate limit is checked over, in seconds.
RATE_WINDOWS = (0.5, 1.0, 2.0, 5.0)
#: Admissions tolerated above GCRA's bound: a run records its admission a moment after it.
RATE_SLACK = 1


@dataclass
class GuardHistory:
    """Everything a chaos fleet recorded, read at one moment."""

    leases: list[Holding]
    slots: list[Holding]
    admissions: list[Admission]
    writes: list[FencedWrite]

    @classmethod
    def read(cls, fleet: ChaosFleet, kills: dict[str, float]) -> GuardHistory:
        """Read the records; ``kills``: worker node name -> when the test killed it."""
        lost = {r["id"] for r in fleet.records("lost")}
        with fleet.client() as client:
            raw = client.lrange(f"{fleet.prefix}:resource", 0, -1)
        writes = [
            FencedWrite(seq, e["key"], e["holder"], int(e["token"]), bool(e["accepted"]))
            for seq, e in enumerate(json.loads(item) for item in raw)
        ]
        return cls(
            leases=_holdings(fleet.records("leases"), lost, kills, key=lambda r: r["key"]),
            slots=_holdings(fleet.records("slots"), lost, kills, key=lambda r: "capped"),
            admissions=_admissions(fleet.records("admissions"), fleet.records("deferred")),
            writes=writes,
        )

    def summary(self) -> str:
        refused = sum(1 for w in self.writes if not w.accepted)
        lost = sum(1 for h in self.leases + self.slots if h.lost)
        times = sorted(a.t for a in self.admissions)
        most = {w: busiest(times, w)[0] for w in (1.0, 2.0)}
        return (
            f"{len(self.leases)} lock holders ({len(self.writes)} fenced writes, {refused} "
            f"refused), {len(self.slots)} slot holders, {lost} leases lost, "
            f"{len(self.admissions)} rate-limited admissions "
            f"({sum(a.t != a.charged for a in self.admissions)} reserved; busiest 1 s / 2 s: "
            f"{most[1.0]} / {most[2.0]})"
        )

    def holders_of(self, key: str) -> list[Holding]:
        return [h for h in self.leases if h.key == key]


def _admissions(runs: list[dict[str, Any]], deferrals: list[dict[str, Any]]) -> list[Admission]:
    """Each run, charged when it ran, or when its slot was reserved (its last deferral)."""
    reserved_at: dict[str, float] = {}
    for deferral in deferrals:  # in order: the last one wins
        if deferral["reserved"]:
            reserved_at[deferral["id"]] = deferral["t"]
    return [
        Admission(r["t"], reserved_at.get(r["id"], r["t"]) if r["reserved"] else r["t"])
        for r in runs
    ]


def _holdings(
    records: list[dict[str, Any]], lost: set[str], kills: dict[str, float], key: Any
) -> list[Holding]:
    ends = {r["id"]: r for r in records if r["phase"] == "end"}
    found = []
    for start in (r for r in records if r["phase"] == "start"):
        end = ends.get(start["id"])
        # No end: killed with its worker, or still running.
        until = end["t"] if end else kills.get(node(start["worker"]), math.inf)
        found.append(
            Holding(
                holder=start["id"],
                key=key(start),
                start=start["t"],
                end=until,
                token=int(start.get("token", 0)),
                lost=start["id"] in lost,
            )
        )
    return found


def audit_guards(
    fleet: ChaosFleet,
    *,
    kills: Sequence[tuple[str, Kill]] = (),
    wipes: Sequence[Moment] = (),
) -> GuardHistory:
    """Run every guard check on what ``fleet`` recorded; fail with all the violations.

    Args:
        kills: ``(worker node name, Kill)`` for each holder the test killed (or froze:
            its lease must come back all the same).
        wipes: Moments guard state was wiped (the rate limit may admit another burst
            there; every run holding a lease across one must report ``lease_lost``).

    Returns:
        The history, for the test's own assertions.
    """
    history = GuardHistory.read(fleet, {node: kill.at for node, kill in kills})
    print("audited:", history.summary())
    violations = {
        "fencing": fencing_violations(history.writes),
        "lock exclusivity": overlapping_holders(history.leases),
        "concurrency cap": cap_violations(history.slots, limits.CAP),
        "rate limit": rate_violations(
            history.admissions,
            rate=limits.RATE,
            burst=limits.BURST,
            windows=RATE_WINDOWS,
            slack=RATE_SLACK,
            wipes=wipes,
        ),
        "lease recovery": slow_recoveries(
            [kill for _, kill in kills], history.leases, ttl=limits.LOCK_TTL
        ),
        "unreported lease loss": unreported_losses(history.leases + history.slots, wipes),
        "worker crashes": crashed_workers(fleet.reports()),
    }
    report = {name: found for name, found in violations.items() if found}
    assert not report, "the auditor found violations:\n" + "\n".join(
        f"  {name}: {line}" for name, lines in report.items() for line in lines[:10]
    )
    return history
