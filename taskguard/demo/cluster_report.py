"""What the Redis Cluster stage measured, its row in the results and its verdict."""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["ClusterResult", "cluster_held", "cluster_rows", "cluster_verdict", "most_in_a_second"]


def most_in_a_second(starts: Sequence[float]) -> int:
    """The most starts within any one second (a window ``[t, t + 1]`` from a start).

    Example:
        >>> most_in_a_second([0.0, 0.25, 0.5, 0.75, 1.0, 1.25])
        5
    """
    times = sorted(starts)
    return max((bisect.bisect_right(times, t + 1.0) - i for i, t in enumerate(times)), default=0)


@dataclass(frozen=True, kw_only=True)
class ClusterResult:
    """The Cluster stage: per-tenant buckets on a 3-master Redis Cluster.

    Attributes:
        rate: Each tenant's limit, in tasks per second.
        per_tenant: Tasks published per tenant.
        starts: Each tenant's start times (Redis ``TIME`` of the demo's own server).
        evalsha: ``EVALSHA`` calls each master ran during the stage, by its port: the
            admissions (and any other script the workers sent there).
        tenants_by_master: How many tenants' buckets each master holds (by port), by the
            cluster's slot map: the admissions follow it.
        retries: ``request.retries`` spent over every run (deferral is not a retry).
        deferrals: Runs that had been deferred before they started.
        workers: Worker instances in the fleet.
        skipped: Why the stage did not run (no ``redis-server`` binary), else "".
    """

    rate: int
    per_tenant: int
    starts: Mapping[str, Sequence[float]] = field(default_factory=dict)
    evalsha: Mapping[int, int] = field(default_factory=dict)
    tenants_by_master: Mapping[int, int] = field(default_factory=dict)
    retries: int = 0
    deferrals: int = 0
    workers: int = 0
    skipped: str = ""

    @property
    def tenants(self) -> int:
        return len(self.starts)

    @property
    def ran(self) -> int:
        return sum(len(found) for found in self.starts.values())

    @property
    def expected(self) -> int:
        return self.tenants * self.per_tenant

    @property
    def worst(self) -> int:
        """The most starts of one tenant within any second."""
        return max((most_in_a_second(found) for found in self.starts.values()), default=0)

    @property
    def shares(self) -> list[float]:
        """Each master's share of the stage's ``EVALSHA`` calls, largest first."""
        return [share for _, share in self.by_master] if sum(self.evalsha.values()) else []

    @property
    def by_master(self) -> list[tuple[int, float]]:
        """Per master, largest share first: the tenants it holds and its share of the
        stage's ``EVALSHA`` calls."""
        total = sum(self.evalsha.values()) or 1
        rows = [
            (self.tenants_by_master.get(port, 0), calls / total)
            for port, calls in self.evalsha.items()
        ]
        return sorted(rows, key=lambda row: -row[1])


def cluster_held(result: ClusterResult) -> bool:
    """Every task ran, no tenant went past its rate (a one-second window's edges may count
    one start more), no retry was spent, and every master served admissions."""
    if result.skipped:
        return True  # not run: nothing to hold (the report says why)
    return (
        result.ran == result.expected > 0
        and result.worst <= result.rate + 1
        and result.retries == 0
        and len(result.evalsha) >= 3
        and all(calls > 0 for calls in result.evalsha.values())
    )


def cluster_rows(result: ClusterResult) -> list[tuple[str, ...]]:
    """The stage's table: a head and one row."""
    shares = " / ".join(f"{share:.0%}" for share in result.shares) or "-"
    placed = " / ".join(f"{tenants}" for tenants, _ in result.by_master) or "-"
    return [
        ("Redis Cluster stage", "tenants", "limit each", "ran", "most in 1 s", "deferred",
         "tenants per master", "EVALSHA per master"),
        ("per-tenant RateLimit", f"{result.tenants}", f"{result.rate}/s",
         f"{result.ran}/{result.expected}", f"{result.worst}", f"{result.deferrals}", placed,
         shares),
    ]  # fmt: skip


def cluster_verdict(result: ClusterResult) -> tuple[str, str]:
    """The tag and the sentence for the stage."""
    if result.skipped:
        return "note", f"Redis Cluster stage not run: {result.skipped}."
    shares = " / ".join(f"{share:.0%}" for share in result.shares)
    placed = " / ".join(f"{tenants}" for tenants, _ in result.by_master)
    sentence = (
        f"RateLimit({result.rate}/s, key='{{tenant}}') with its state on a 3-master Redis "
        f"Cluster: each of the {result.tenants} tenants' buckets lives in its own key's slot "
        f"({placed} tenants per master, as their keys hash), so the admissions spread over "
        f"the masters ({shares} of the EVALSHA calls, the parking sweeps on the prefix's own "
        f"slot included) and "
        f"the {result.workers} workers still share one bucket per tenant: no tenant started "
        f"more than {result.worst} tasks in any second (the limit, plus one at a window's "
        f"edge); {result.retries} retries spent."
    )
    return ("HELD" if cluster_held(result) else "FAIL"), sentence
