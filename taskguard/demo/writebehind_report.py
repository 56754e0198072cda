"""The write-behind stage's results row and verdict."""

from __future__ import annotations

from taskguard.urls import redact

from .tasks import DRAIN_LEASE_TTL
from .writebehind_stage import WriteBehindResult

__all__ = ["writebehind_held", "writebehind_row", "writebehind_verdict"]

TITLE = "taskguard write-behind"


def _problems(result: WriteBehindResult) -> list[str]:
    problems = []
    if result.stale:
        problems.append(
            f"{len(result.stale)} of {result.sensors} rows do not hold the newest reading "
            f"(e.g. {result.stale[0]})"
        )
    if result.dead_letters:
        problems.append(f"{result.dead_letters} records were dead-lettered")
    if result.killed_at is None:
        problems.append("the drain-only worker was never killed")
    if result.writes == 0:
        problems.append("no task wrote anything")
    return problems


def writebehind_held(result: WriteBehindResult) -> bool:
    """Whether every row in the database holds the newest value written, none lost."""
    return not _problems(result)


def writebehind_row(result: WriteBehindResult) -> list[tuple[str, str]]:
    """The write-behind stage's results table: (column, value) pairs."""
    ratio = result.records / result.rows_written if result.rows_written else 0.0
    return [
        ("stage", TITLE),
        ("writes", f"{result.writes:,}"),
        ("rows exact", f"{result.exact}/{result.sensors}"),
        ("peak backlog", f"{result.peak_backlog:,}"),
        ("drained after", "-" if result.drained_after is None else f"{result.drained_after:.1f}s"),
        ("batches", f"{result.batches:,}"),
        ("coalesced", f"{ratio:.1f}x"),
        ("dead letters", f"{result.dead_letters}"),
    ]


def writebehind_verdict(result: WriteBehindResult) -> tuple[str, str]:
    """The tag (``HELD`` or ``FAIL``) and the sentence for the write-behind stage."""
    problems = _problems(result)
    if problems:
        return "FAIL", f"{TITLE}: " + "; ".join(problems) + "."
    return "HELD", (
        f"{TITLE}: {result.tasks} tasks wrote {result.writes:,} readings for "
        f"{result.sensors} sensors, each set_many one Redis call (value, queue record and "
        f"dirty mark at once); the workers' drain pools wrote them to "
        f"{redact(result.db_url)} in {result.batches:,} one-transaction batches. Worker 1 "
        f"was killed with SIGKILL holding {result.killed_held} partitions; the others took "
        f"them over after its {DRAIN_LEASE_TTL:g}s leases and re-delivered what it had read. "
        f"All {result.exact} rows hold the newest reading, nothing was dead-lettered, and "
        f"the queue was empty {result.drained_after or 0:.1f}s after the last write."
    )
