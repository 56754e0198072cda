"""The demo's printed report: header, the results tables and one verdict per stage."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from taskguard.urls import redact

from .breaker_report import BreakerResult, breaker_row, breaker_verdict
from .cluster_report import ClusterResult, cluster_rows, cluster_verdict
from .park_report import ParkResult, park_note, park_rows, park_verdict
from .park_stage import DURATION, TASKS
from .stages import StageResult
from .tasks import CAP, PARTNER_BREAKER
from .writebehind_report import writebehind_row, writebehind_verdict
from .writebehind_stage import WriteBehindResult

__all__ = ["Header", "render_header", "render_results", "taskguard_held"]

#: Stage 2 holds when the fleet stayed within this factor of the limit (the window's
#: edges can count one start more than ``rate * seconds``).
HOLD_TOLERANCE = 1.10
#: Stage 1 "overshoots" above this factor; with 3 workers it runs close to 3x.
OVERSHOOT = 1.5

#: Verdicts are wrapped to the width of the results table.
WIDTH = 94

TITLES = {"celery": "Celery rate_limit", "taskguard": "taskguard RateLimit"}


@dataclass(frozen=True, kw_only=True)
class Header:
    """What the report header shows about the run's setup."""

    version: str
    redis_url: str
    redis_note: str
    db_url: str
    workers: int
    concurrency: int
    seconds: float
    rate: int
    prefix: str
    calls_per_second: int = 20
    park_concurrency: int = 2


def render_header(header: Header) -> str:
    """The block printed before the stages run."""
    spec = PARTNER_BREAKER
    return "\n".join(
        [
            f"taskguard {header.version} demo: a rate limit, a concurrency cap, a circuit "
            f"breaker and a write-behind cache for {header.workers} Celery workers",
            f"  redis     {redact(header.redis_url)}  ({header.redis_note})",
            f"  database  {redact(header.db_url)}  (the write-behind stage drains into it)",
            f"  fleet     {header.workers} x `celery worker -P prefork -c {header.concurrency}`"
            f" (prefetch 1), {header.seconds:g}s measured per rate-limit stage",
            f"  limit     {header.rate}/s for the task, whichever worker runs it",
            f"  cap       Concurrency({CAP}) for the fleet: {TASKS} tasks of {DURATION:g}s at "
            f"once on {header.workers} x `-c {header.park_concurrency}`",
            f"  breaker   CircuitBreaker({spec.name!r}, window={spec.window}, minimum_calls="
            f"{spec.minimum_calls}, failure_rate={spec.failure_rate:g},",
            f"            open_for={spec.open_for:g}, half_open_probes={spec.half_open_probes}) "
            f"before a local HTTP stub, called {header.calls_per_second}/s",
            f"  keys      every key and queue of this run starts with {header.prefix!r}",
        ]
    )


def taskguard_held(result: StageResult) -> bool:
    """Whether taskguard's stage kept the fleet at the limit without spending retries."""
    return result.ratio <= HOLD_TOLERANCE and result.retries_spent == 0


def _verdict(result: StageResult) -> tuple[str, str]:
    """The tag (``OVER``, ``note``, ``HELD``, ``FAIL``) and the sentence for one stage."""
    limit = f"{result.rate}/s"
    ran = f"the fleet ran {result.achieved:.1f}/s, {result.ratio:.2f}x the limit"
    if result.stage == "celery":
        if result.ratio >= OVERSHOOT:
            return "OVER", (
                f"{TITLES['celery']}: each of the {result.workers} workers allowed {limit} "
                f"on its own, so {ran}."
            )
        return "note", (
            f"{TITLES['celery']}: {ran}. Its limit is per worker, so it allows up to "
            f"{result.workers} x {limit}; its rate-limit scheduling fell short of that here."
        )
    slow = " (under it: the machine could not keep up)" if result.ratio < 0.8 else ""
    retries = (
        "request.retries stayed 0 in every run: deferral is not a retry."
        if result.retries_spent == 0
        else f"yet {result.retries_spent} retries were spent."
    )
    return "HELD" if taskguard_held(result) else "FAIL", (
        f"{TITLES['taskguard']}: one bucket in Redis for all {result.workers} workers; "
        f"{ran}{slow}. {result.deferrals} deferrals: each task that found no token was "
        f"re-published to run when its token is due ({result.deferred_runs} of the "
        f"{result.tasks} measured runs had been deferred), and {retries}"
    )


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows (the first is the head) as aligned lines: text left, numbers right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(row: Sequence[str]) -> str:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        return "  " + "  ".join(cells)

    rule = "  " + "-" * (sum(widths) + 2 * (len(widths) - 1))
    return [line(rows[0]), rule, *(line(row) for row in rows[1:])]


def _fill(tag: str, sentence: str) -> str:
    return textwrap.fill(
        sentence, width=WIDTH, initial_indent=f"  {tag:<4}  ", subsequent_indent=" " * 8
    )


def render_results(
    results: Sequence[StageResult],
    breaker: BreakerResult | None = None,
    writebehind: WriteBehindResult | None = None,
    park: ParkResult | None = None,
    cluster: ClusterResult | None = None,
) -> str:
    """The results tables and the verdicts."""
    head = (
        "stage",
        "configured",
        "achieved",
        "ratio",
        "tasks",
        "workers",
        "retries spent",
        "deferrals",
    )
    rows = [head]
    for r in results:
        rows.append(
            (
                TITLES[r.stage],
                f"{r.rate}/s",
                f"{r.achieved:.1f}/s",
                f"{r.ratio:.2f}x",
                f"{r.tasks}",
                f"{r.workers_used}/{r.workers}",
                f"{r.retries_spent}",
                f"{r.deferrals}" if r.stage == "taskguard" else "-",
            )
        )
    seconds = results[0].seconds if results else 0
    sent = results[0].sent if results else 0
    out = ["", "Results", *_table(rows)]
    out.append(
        f"  tasks: started in the {seconds:g}s window ({sent} published at once per stage); "
        "workers: instances that ran any"
    )
    if park is not None:
        out += ["", *_table(park_rows(park)), park_note(park)]
    if breaker is not None:
        cells = breaker_row(breaker)
        out += ["", *_table([[k for k, _ in cells], [v for _, v in cells]])]
        out.append(
            "  while open: stub calls while it was open; deferred: tasks deferred, then run; "
            "failed: by the breaker"
        )
    if writebehind is not None:
        cells = writebehind_row(writebehind)
        out += ["", *_table([[k for k, _ in cells], [v for _, v in cells]])]
        out.append(
            "  rows exact: database rows holding the newest reading written; coalesced: queue "
            "records per row written"
        )
    if cluster is not None and not cluster.skipped:
        out += ["", *_table(cluster_rows(cluster))]
        out.append(
            "  most in 1 s: the most one tenant started within any second; EVALSHA per master: "
            "every script call (admissions, and the parking sweeps on the prefix's slot)"
        )
    out.append("")
    out += [_fill(*_verdict(result)) for result in results]
    if park is not None:
        out.append(_fill(*park_verdict(park)))
    if breaker is not None:
        out.append(_fill(*breaker_verdict(breaker)))
    if writebehind is not None:
        out.append(_fill(*writebehind_verdict(writebehind)))
    if cluster is not None:
        out.append(_fill(*cluster_verdict(cluster)))
    return "\n".join(out)
