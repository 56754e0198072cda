"""The demo's glimpse of ``taskguard status``: what the guards held in Redis at a moment.

``taskguard status`` renders :func:`taskguard.status.read_status` as tables (with the
``cli`` extra's rich); the demo installs no more than it needs, so it prints the same
reading as plain lines: the slots held and by whom, the tasks parked behind them, locks,
breakers and rate-limit buckets, each section only when it has something.
"""

from __future__ import annotations

import time

from taskguard.backend.redis import HasBackend
from taskguard.status import Status, read_status
from taskguard.status.model import BreakerStatus, SlotSet

__all__ = ["StatusSampler", "render_status"]

#: At most one reading per this many seconds while sampling.
SAMPLE_EVERY = 0.5
#: Holders named per slot set.
SHOWN_HOLDERS = 3


class StatusSampler:
    """Keeps the reading taken when the most tasks were parked (at most 2 readings/s)."""

    def __init__(self, client: HasBackend) -> None:
        self.client = client
        self.best: Status | None = None
        self._best_parked = 0
        self._last = 0.0

    def offer(self, parked: int) -> None:
        """Read the status now if ``parked`` beats the best reading's and time allows."""
        now = time.monotonic()
        if parked <= self._best_parked or now - self._last < SAMPLE_EVERY:
            return
        self._last = now
        self.best = read_status(self.client)
        self._best_parked = parked


def _where(name: str, key: str | None) -> str:
    return name if key is None else f"{name}[{key}]"


def _slots(slot: SlotSet) -> str:
    holders = ", ".join(
        f"{h.owner.split(':', 1)[0][:8]} ({h.lease_left:.0f}s lease)"
        for h in slot.holders[:SHOWN_HOLDERS]
    )
    more = f", +{len(slot.holders) - SHOWN_HOLDERS}" if len(slot.holders) > SHOWN_HOLDERS else ""
    return f"slots    {_where(slot.name, slot.key)}: {len(slot.holders)} held by {holders}{more}"


def _breaker(breaker: BreakerStatus) -> str:
    left = f", {breaker.open_left:.1f}s to a probe" if breaker.open_left is not None else ""
    return (
        f"breaker  {breaker.name}: {breaker.state}{left}; window {breaker.calls} calls, "
        f"{breaker.failures} failed"
    )


def render_status(status: Status, indent: str = "    ") -> list[str]:
    """Plain lines for what ``status`` holds (the owners shortened to their task id)."""
    lines = [_slots(s) for s in status.slots]
    lines += [
        f"parked   {_where(lot.name, lot.key)}: {lot.tasks} task(s) waiting, FIFO, for a "
        f"release to hand them back"
        for lot in status.parked.lots
    ]
    if status.parked.in_flight:
        lines.append(f"parked   {status.parked.in_flight} hand-back(s) on their way to a worker")
    lines += [
        f"lock     {_where(lock.name, lock.key)}: held by {lock.owner.split(':', 1)[0][:8]}, "
        f"fencing token {lock.fencing_token}"
        for lock in status.locks
        if lock.kind == "lock"
    ]
    lines += [_breaker(b) for b in status.breakers]
    lines += [
        f"bucket   {_where(b.name, b.key)}: {b.backlog:.2f}s of backlog" for b in status.rate_limits
    ]
    return [indent + line for line in lines]
