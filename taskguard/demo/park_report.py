"""What the parking stage measured, and how the report tells it.

Every time here is on the Redis server's clock, in seconds: each run of a capped task
records when its body started and ended, by Redis ``TIME``, so runs in different worker
processes compare exactly. A run's recorded interval lies inside the time it held its
slot (the body starts after admission and ends before the release), so the most
intervals overlapping at once can only undercount the slots held, never overcount them.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from taskguard.status import Status

from .tasks import CAP

__all__ = [
    "BENCHMARK_OCCUPANCY",
    "MIN_OCCUPANCY",
    "CapRun",
    "ParkResult",
    "park_held",
    "park_note",
    "park_rows",
    "park_verdict",
]

#: The verdict's floor for the cap's mean occupancy. The benchmark's goal is
#: :data:`BENCHMARK_OCCUPANCY` on a quiet machine; the demo runs wherever it is started,
#: with an embedded Redis sharing the CPUs with the workers, so it allows a little more.
MIN_OCCUPANCY = 0.90
#: ``python -m benchmarks --only workconserving``'s goal (measured there: 98%).
BENCHMARK_OCCUPANCY = 0.95
TITLE = f"taskguard Concurrency({CAP})"


@dataclass(frozen=True)
class CapRun:
    """One batch of capped tasks, published at once, as the workers recorded it.

    Attributes:
        tasks: Tasks published, numbered ``0 .. tasks - 1``.
        duration: Seconds each task holds its slot.
        runs: One record per run (``n``, ``t`` start, ``end``, ``retries``,
            ``deferrals``, ``worker``), in the order they were recorded.
        peak_parked: The most tasks parked at once (``Client.parked()``, sampled).
        timed_out: The batch had not finished when the stage stopped waiting.
        status: ``taskguard status``'s reading when the most tasks were parked (None:
            none was taken).
    """

    tasks: int
    duration: float
    runs: list[dict[str, Any]] = field(repr=False)
    peak_parked: int = 0
    timed_out: bool = False
    status: Status | None = field(default=None, repr=False)

    @property
    def ideal(self) -> float:
        """The shortest possible makespan: every slot busy from first start to last end."""
        return self.tasks * self.duration / CAP

    @property
    def makespan(self) -> float:
        """First start to last end (infinite when nothing ran)."""
        if not self.runs:
            return math.inf
        return max(float(r["end"]) for r in self.runs) - min(float(r["t"]) for r in self.runs)

    @property
    def ratio(self) -> float:
        """Makespan over the ideal (1.0: no slot ever stood idle while work waited)."""
        return self.makespan / self.ideal

    @cached_property
    def _running(self) -> tuple[float, int]:
        """(slot-seconds: the running count integrated over the makespan, most at once)."""
        events = sorted(
            [(float(r["t"]), 1) for r in self.runs] + [(float(r["end"]), -1) for r in self.runs]
        )
        area, now, peak = 0.0, 0, 0
        last = events[0][0] if events else 0.0
        for at, step in events:  # at equal times an end (-1) sorts before a start
            area += now * (at - last)
            now, last = now + step, at
            peak = max(peak, now)
        return area, peak

    @property
    def occupancy(self) -> float:
        """Mean share of the cap's slots in use over the makespan."""
        return self._running[0] / (CAP * self.makespan) if self.runs else 0.0

    @property
    def most_at_once(self) -> int:
        """The most runs whose bodies overlapped."""
        return self._running[1]

    @property
    def deferrals_per_task(self) -> float:
        """Mean ``taskguard-deferrals`` header the runs saw (a parked task counts 1)."""
        return sum(int(r["deferrals"]) for r in self.runs) / len(self.runs) if self.runs else 0.0

    @cached_property
    def _counts(self) -> Counter[int]:
        return Counter(int(r["n"]) for r in self.runs)

    @property
    def ran_once(self) -> int:
        """Tasks that ran exactly once."""
        return sum(1 for n in range(self.tasks) if self._counts[n] == 1)

    @property
    def ran_twice(self) -> int:
        """Tasks that ran more than once."""
        return sum(1 for count in self._counts.values() if count > 1)

    @property
    def missing(self) -> int:
        """Tasks that never ran."""
        return sum(1 for n in range(self.tasks) if not self._counts[n])

    @property
    def retries_spent(self) -> int:
        """Sum of ``request.retries`` over every run."""
        return sum(int(r["retries"]) for r in self.runs)


@dataclass(frozen=True)
class ParkResult:
    """What the parking stage measured.

    Attributes:
        workers: Worker instances in the fleet.
        concurrency: Pool processes per worker.
        parked: The batch whose refused tasks park (the default).
        by_time: The same batch deferred by time (``park: False``); None if not run.
    """

    workers: int
    concurrency: int
    parked: CapRun
    by_time: CapRun | None = None

    @property
    def processes(self) -> int:
        """Pool processes in the fleet: how many tasks could run at once without the cap."""
        return self.workers * self.concurrency


def _problems(run: CapRun) -> list[str]:
    """What did not hold, in words (empty: it held)."""
    problems = []
    if run.most_at_once > CAP:
        problems.append(f"{run.most_at_once} tasks ran at once, above the cap of {CAP}")
    if run.missing:
        problems.append(f"{run.missing} of {run.tasks} tasks never ran")
    if run.ran_twice:
        problems.append(f"{run.ran_twice} tasks ran more than once")
    if run.retries_spent:
        problems.append(f"{run.retries_spent} retries were spent")
    if run.runs and run.occupancy < MIN_OCCUPANCY:
        problems.append(
            f"the cap was {run.occupancy:.0%} occupied, under the {MIN_OCCUPANCY:.0%} this "
            f"demo asks ({BENCHMARK_OCCUPANCY:.0%} is the benchmark's goal)"
        )
    return problems


def park_held(result: ParkResult) -> bool:
    """Whether the cap held, every task ran exactly once with no retry, and no slot
    stood idle for long while tasks waited (occupancy at least :data:`MIN_OCCUPANCY`)."""
    return not _problems(result.parked)


def _row(label: str, run: CapRun) -> tuple[str, ...]:
    ratio = "-"
    if run.runs:
        ratio = f"{run.ratio:.2f}x" if not run.missing else f">{run.ratio:.1f}x"
    return (
        label,
        f"{run.tasks}",
        f"{run.makespan:.1f}s" if run.runs else "-",
        ratio,
        f"{run.occupancy:.0%}",
        f"{run.most_at_once}",
        f"{run.deferrals_per_task:.2f}",
        f"{run.ran_once}/{run.tasks}",
        f"{run.retries_spent}",
        f"{run.peak_parked}",
    )


def park_rows(result: ParkResult) -> list[tuple[str, ...]]:
    """The parking stage's results table: the head, then one row per batch."""
    head = (
        f"Concurrency({CAP})",
        "tasks",
        "makespan",
        "x ideal",
        "occupancy",
        "at once",
        "deferrals",
        "ran once",
        "retries",
        "parked",
    )
    rows = [head, _row("parked (default)", result.parked)]
    if result.by_time is not None:
        rows.append(_row("by time (park: False)", result.by_time))
    return rows


def park_note(result: ParkResult) -> str:
    """The lines under the table: what its columns mean."""
    run = result.parked
    return (
        f"  makespan: first start to last end, ideal {run.tasks} x {run.duration:g}s / {CAP} = "
        f"{run.ideal:.1f}s; occupancy: slot-seconds / ({CAP} x makespan)\n"
        "  at once: most running at once; deferrals: per task, from its header; parked: the "
        "most client.parked() showed"
    )


def _comparison(run: CapRun | None) -> str:
    if run is None:
        return ""
    if not run.runs:
        return " Deferred by time instead (park: False), no task ran."
    took = f"took {run.ratio:.1f}x the ideal"
    if run.missing:
        took = f"did not finish in time ({run.tasks - run.missing} of {run.tasks} ran)"
    return (
        f" Deferred by time instead (park: False, as before parking), the same batch "
        f"{took}, with the cap {run.occupancy:.0%} occupied and {run.deferrals_per_task:.1f} "
        "deferrals per task: refused tasks came back in waves, and slots freed between "
        "them stood idle."
    )


def park_verdict(result: ParkResult) -> tuple[str, str]:
    """The tag (``HELD`` or ``FAIL``) and the sentence for the parking stage."""
    run = result.parked
    problems = _problems(run)
    if problems:
        return "FAIL", f"{TITLE}: " + "; ".join(problems) + "." + _comparison(result.by_time)
    return "HELD", (
        f"{TITLE}: {run.tasks} tasks of {run.duration:g}s published at once to "
        f"{result.processes} pool processes ({result.workers} workers x "
        f"{result.concurrency}); never more than {run.most_at_once} ran at once. Each task "
        f"refused a slot was parked in Redis (up to {run.peak_parked} at once) and handed "
        f"back by the release that freed one, the slot held for it: the batch took "
        f"{run.makespan:.1f}s, {run.ratio:.2f}x the ideal {run.ideal:.1f}s, with the cap "
        f"{run.occupancy:.0%} occupied (this demo asks {MIN_OCCUPANCY:.0%}; "
        f"{BENCHMARK_OCCUPANCY:.0%} is the benchmark's goal on a quiet machine). "
        f"{run.deferrals_per_task:.2f} deferrals per task; each of the {run.tasks} ran "
        f"exactly once, and request.retries stayed 0." + _comparison(result.by_time)
    )
