"""What the circuit-breaker stage measured, and how the report tells it.

Every time here is on the Redis server's clock, in seconds: the workers stamp their
records with Redis ``TIME``, and the stub's call log (kept in the demo's process) is
shifted onto it by the offset measured at the stage's start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .partner import PartnerCall
from .tasks import PARTNER_BREAKER

__all__ = ["IN_FLIGHT_GRACE", "BreakerResult", "breaker_held", "breaker_row", "breaker_verdict"]

#: Calls the stub receives this soon after the breaker opened were admitted before it
#: opened (their tasks were already past admission in other workers): "in flight".
IN_FLIGHT_GRACE = 0.25
TITLE = "taskguard CircuitBreaker"


@dataclass(frozen=True)
class BreakerResult:
    """What the breaker stage recorded.

    Attributes:
        workers: Worker instances in the fleet.
        slots: Pool processes in the fleet (tasks that can be in flight at once).
        rate: Calls published per second.
        start: When publishing began.
        end: When publishing stopped.
        published: Task id -> when it was published.
        calls: The stub's own call log.
        switches: ``(t, healthy)`` for every switch of the stub's health.
        transitions: The breaker's state changes, recorded in the workers.
        runs: One record per task run that called the stub (``id``, ``status``...).
        failures: One record per task that ended FAILURE (``id``, ``error``,
            ``by_taskguard``).
        deferrals: ``task_deferred`` signals in the stage.
    """

    workers: int
    slots: int
    rate: int
    start: float
    end: float
    published: dict[str, float] = field(repr=False)
    calls: list[PartnerCall] = field(repr=False)
    switches: list[tuple[float, bool]]
    transitions: list[dict[str, Any]]
    runs: list[dict[str, Any]] = field(repr=False)
    failures: list[dict[str, Any]] = field(repr=False)
    deferrals: int = 0

    def _first(self, old: str, new: str, after: float) -> dict[str, Any] | None:
        return next(
            (r for r in self.transitions if (r["old"], r["new"]) == (old, new) and r["t"] > after),
            None,
        )

    @cached_property
    def opened(self) -> dict[str, Any] | None:
        """The first closed -> open transition."""
        return self._first("closed", "open", self.start)

    @cached_property
    def half_opened(self) -> dict[str, Any] | None:
        """The first open -> half_open transition after it opened."""
        return self._first("open", "half_open", self.opened["t"]) if self.opened else None

    @cached_property
    def closed(self) -> dict[str, Any] | None:
        """The first half_open -> closed transition after that."""
        half = self.half_opened
        return self._first("half_open", "closed", half["t"]) if half else None

    def calls_between(self, start: float, end: float) -> list[PartnerCall]:
        """The stub's calls received in ``[start, end)``."""
        return [c for c in self.calls if start <= c.t < end]

    @property
    def in_flight(self) -> list[PartnerCall]:
        """Calls that reached the stub just after it opened, admitted before it did."""
        if self.opened is None:
            return []
        at = self.opened["t"]
        return self.calls_between(at, at + IN_FLIGHT_GRACE)

    @property
    def calls_while_open(self) -> int:
        """Calls the stub got while the breaker was open (after the in-flight ones)."""
        if self.opened is None:
            return 0
        until = self.half_opened["t"] if self.half_opened else self.end
        return len(self.calls_between(self.opened["t"] + IN_FLIGHT_GRACE, until))

    @property
    def probes(self) -> int:
        """Calls the stub got while the breaker was half-open."""
        if self.half_opened is None:
            return 0
        until = self.closed["t"] if self.closed else self.end
        return len(self.calls_between(self.half_opened["t"], until))

    @cached_property
    def worker_of(self) -> dict[str, str]:
        """Task id -> the worker that ran it."""
        return {r["id"]: r["worker"] for r in self.runs}

    @cached_property
    def deferred(self) -> set[str]:
        """Tasks that were deferred at least once and then ran."""
        return {r["id"] for r in self.runs if int(r["deferrals"]) > 0}

    @property
    def deferred_completed(self) -> int:
        """Deferred tasks whose call succeeded."""
        done = {r["id"] for r in self.runs if r["status"] == 200}
        return len(self.deferred & done)

    @property
    def failed_at_partner(self) -> int:
        """Tasks that ended FAILURE because the partner answered with an error."""
        return sum(1 for f in self.failures if not f["by_taskguard"])

    @property
    def failed_by_taskguard(self) -> int:
        """Tasks that ended FAILURE because of taskguard (the breaker, a deferral cap)."""
        return sum(1 for f in self.failures if f["by_taskguard"])

    @property
    def unfinished(self) -> int:
        """Published tasks that had neither succeeded nor failed when the stage ended."""
        ended = {r["id"] for r in self.runs if r["status"] == 200}
        ended |= {f["id"] for f in self.failures}
        return len(set(self.published) - ended)

    @property
    def retries_spent(self) -> int:
        """Sum of ``request.retries`` over every run."""
        return sum(int(r["retries"]) for r in self.runs)


def _problems(result: BreakerResult) -> list[str]:
    """What did not hold, in words (empty: it held)."""
    if result.opened is None:
        return ["the breaker never opened"]
    problems = []
    if result.calls_while_open:
        problems.append(f"the stub got {result.calls_while_open} calls while it was open")
    if len(result.in_flight) > result.slots:
        problems.append(f"{len(result.in_flight)} calls arrived just after it opened")
    if result.half_opened is None:
        problems.append("it never let a probe through")
    elif result.probes != PARTNER_BREAKER.half_open_probes:
        problems.append(f"{result.probes} calls reached the stub while half-open")
    if result.closed is None:
        problems.append("it did not close after the partner recovered")
    if not result.deferred or result.deferred_completed < len(result.deferred):
        problems.append(
            f"{result.deferred_completed} of {len(result.deferred)} deferred tasks completed"
        )
    if result.failed_by_taskguard:
        problems.append(f"{result.failed_by_taskguard} tasks ended FAILURE because of it")
    if result.unfinished:
        problems.append(f"{result.unfinished} tasks had not finished when the stage ended")
    if result.retries_spent:
        problems.append(f"{result.retries_spent} retries were spent")
    return problems


def breaker_held(result: BreakerResult) -> bool:
    """Whether the breaker opened for the whole fleet, probed once, closed, lost nothing."""
    return not _problems(result)


def breaker_row(result: BreakerResult) -> list[tuple[str, str]]:
    """The breaker stage's results table: (column, value) pairs."""
    return [
        ("stage", "taskguard breaker"),
        ("opened", "yes" if result.opened else "no"),
        ("while open", f"{result.calls_while_open}"),
        ("probes", f"{result.probes}"),
        ("closed", "yes" if result.closed else "no"),
        ("deferred", f"{len(result.deferred)}"),
        ("completed", f"{result.deferred_completed}"),
        ("failed", f"{result.failed_by_taskguard}"),
        ("retries", f"{result.retries_spent}"),
    ]


def breaker_verdict(result: BreakerResult) -> tuple[str, str]:
    """The tag (``HELD`` or ``FAIL``) and the sentence for the breaker stage."""
    spec = PARTNER_BREAKER
    problems = _problems(result)
    if problems:
        return "FAIL", f"{TITLE}: " + "; ".join(problems) + "."
    probes = "probe" if result.probes == 1 else "probes"
    return "HELD", (
        f"{TITLE}: OPENED for the fleet once the partner failed ({result.failed_at_partner} "
        f"tasks got its HTTP 500); the stub got 0 calls from any of the {result.workers} workers "
        f"while open; {result.probes} {probes} after {spec.open_for:g}s; closed after "
        f"recovery; {len(result.deferred)} deferred tasks completed, 0 failed because of the "
        f"breaker; {result.retries_spent} retries."
    )


def _worker(hostname: str | None) -> str:
    """``tgdemo-1a2b3c4d-breaker2@host`` -> ``worker 2``."""
    match = re.search(r"(\d+)@", hostname or "")
    return f"worker {match.group(1)}" if match else "a worker"


def _change(old: str, new: str) -> str:
    """How the timeline names a transition."""
    spec = PARTNER_BREAKER
    return {
        ("closed", "open"): f"breaker opens at {spec.failure_rate:.0%} failures",
        ("open", "half_open"): f"breaker half-open after {spec.open_for:g}s",
        ("half_open", "closed"): "breaker closes: probe ok",
        ("half_open", "open"): "breaker re-opens: probe failed",
    }.get((old, new), f"breaker {old} -> {new}")


def _events(result: BreakerResult) -> list[tuple[float, str]]:
    """The stage's moments: stub switches, breaker transitions, start and end."""
    events = [(result.start, "stub healthy, breaker closed")]
    for t, healthy in result.switches:
        text = "stub fails: HTTP 500 to every call"
        if healthy:
            text = "stub healthy again"
            if result.opened and result.opened["t"] < t:
                until = result.half_opened["t"] if result.half_opened else result.end
                text += " (breaker still open)" if t < until else ""
        events.append((t, text))
    for r in result.transitions:
        who = _worker(result.worker_of.get(r["task_id"] or ""))
        events.append((r["t"], f"{_change(r['old'], r['new'])} ({who})"))
    events = sorted(e for e in events if result.start <= e[0] < result.end)
    return [*events, (result.end, "publishing stops; queued tasks finish")]


def _calls(result: BreakerResult, a: float, b: float) -> tuple[str, str]:
    """The count and the detail of the stub's calls in ``[a, b)``."""
    calls = result.calls_between(a, b)
    note = ""
    if result.opened and a == result.opened["t"]:
        calls = [c for c in calls if c.t >= a + IN_FLIGHT_GRACE]
        if result.in_flight:
            late = (result.in_flight[-1].t - a) * 1000
            note = f" ({len(result.in_flight)} in flight at the open, landed within {late:.0f} ms)"
    if not calls and a >= result.end:
        return "0", "none were left"
    if not calls:
        return "0", f"none, from any of the {result.workers} workers{note}"
    ok = sum(1 for c in calls if c.status == 200)
    parts = [f"{ok} ok"] if ok else []
    parts += [f"{len(calls) - ok} failed"] if ok < len(calls) else []
    workers = {result.worker_of.get(c.task) for c in calls} - {None}
    detail = f"{', '.join(parts)}, from {len(workers)}/{result.workers} workers{note}"
    if result.half_opened and a == result.half_opened["t"]:
        detail += "; the probe" if len(calls) == 1 else "; the probes"
    else:
        deferred = sum(1 for c in calls if c.task in result.deferred)
        detail += f"; {deferred} deferred tasks" if deferred else ""
    return f"{len(calls)}", detail


def render_timeline(result: BreakerResult) -> str:
    """One row per event, with the stub's calls from it until the next event."""
    events = _events(result)
    last = max((c.t for c in result.calls), default=result.end) + 0.001
    bounds = [t for t, _ in events[1:]] + [max(last, result.end)]
    rows = [
        (f"{t - result.start:5.2f}s", text, *_calls(result, t, until))
        for (t, text), until in zip(events, bounds, strict=True)
    ]
    width = max(len(text) for _, text, _, _ in rows)
    count = max(len(n) for _, _, n, _ in rows)
    head = "stub calls until the next event (its own log)"
    out = ["", f"  {'time':>6}  {'event':<{width}}  {head}"]
    out += [f"  {t}  {text:<{width}}  {n:>{count}}  {detail}" for t, text, n, detail in rows]
    return "\n".join(out)
