"""How a denied task comes back later without spending its retries.

The task is re-published with the same id and arguments after ``retry_after`` (plus
jitter), and the current run ends with :class:`celery.exceptions.Ignore`, so the result
backend keeps the task PENDING and ``request.retries`` is untouched. Deferral state rides in
message headers, merged into the existing ones (so e.g. ``sentry-trace`` survives):

* ``taskguard-deferrals``: how many times the task was deferred;
* ``taskguard-deferred-since``: when it was first deferred (epoch seconds);
* ``taskguard-reserved``: rate-limit buckets whose slot this message already paid for;
* ``taskguard-slot``: when that slot starts (epoch seconds).

A reserved slot is honoured only if the task comes back on time: within half the tightest
bucket's interval after the slot (at least :data:`GRACE_FLOOR`). A task delivered later
than that contests again, so a late-delivered batch of reserved tasks can never start as
a burst; its unused slot is one wasted token (see docs/design.md, "Reservations").
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from celery.exceptions import Ignore

from taskguard import signals
from taskguard.backend.ops import Op
from taskguard.errors import DeferralExhausted
from taskguard.settings import DeferralPolicy

__all__ = [
    "HEADER_COUNT",
    "HEADER_RESERVED",
    "HEADER_SINCE",
    "HEADER_SLOT",
    "DeferralState",
    "defer",
]

logger = logging.getLogger("taskguard.deferral")

HEADER_COUNT = "taskguard-deferrals"
HEADER_SINCE = "taskguard-deferred-since"
HEADER_RESERVED = "taskguard-reserved"
HEADER_SLOT = "taskguard-slot"

#: Smallest lateness (seconds) a reservation tolerates, whatever the bucket's interval.
GRACE_FLOOR = 0.002


@dataclass(frozen=True)
class DeferralState:
    """What the current message says about earlier deferrals."""

    count: int = 0
    since: float | None = None
    reserved: frozenset[str] = field(default_factory=frozenset)
    slot: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, Any] | None) -> DeferralState:
        """Read the state from a task request's headers (missing or malformed: fresh)."""
        if not headers:
            return _FRESH
        try:
            count = int(headers.get(HEADER_COUNT) or 0)
            since_raw = headers.get(HEADER_SINCE)
            since = float(since_raw) if since_raw is not None else None
            reserved = frozenset(str(k) for k in headers.get(HEADER_RESERVED) or ())
            slot_raw = headers.get(HEADER_SLOT)
            slot = float(slot_raw) if slot_raw is not None else None
        except (TypeError, ValueError):
            logger.warning("ignoring malformed taskguard deferral headers: %r", headers)
            return _FRESH
        return cls(count=count, since=since, reserved=reserved, slot=slot)

    def honoured(self, ops: Sequence[Op], now: float) -> frozenset[str]:
        """The reserved buckets this run may skip: all of them if on time, else none."""
        if not self.reserved or self.slot is None:
            return frozenset()
        intervals = [op.interval for op in ops if op.key in self.reserved]
        if not intervals:
            return frozenset()
        late = now - self.slot
        if late > max(min(intervals) / 2, GRACE_FLOOR):
            logger.debug("reserved slot missed by %.3fs; contesting again", late)
            return frozenset()
        return self.reserved


_FRESH = DeferralState()


def defer(
    task: Any,
    *,
    retry_after: float,
    paid: Collection[str],
    slot_in: float | None,
    state: DeferralState,
    policy: DeferralPolicy,
    reason: str,
) -> NoReturn:
    """Re-publish the running task to run after ``retry_after``, then end this run.

    Args:
        task: The bound Celery task whose ``request`` is being deferred.
        retry_after: Seconds until the guards can admit it.
        paid: Rate-limit buckets whose slot this message has paid for; the next run
            skips them if it arrives on time.
        slot_in: Seconds until that slot (``None`` without a reservation): the task is
            re-published to arrive exactly then, without jitter.
        state: The deferral state of the current message.
        policy: Caps and jitter.
        reason: Human-readable cause, for logs and signals.

    Raises:
        Ignore: Always, after the task was re-published (or dropped / dead-lettered).
        DeferralExhausted: When the cap is hit and ``policy.on_exhausted == "fail"``.
    """
    request = task.request
    now = time.time()
    count = state.count + 1
    since = state.since if state.since is not None else now
    age = now - since
    if count > policy.max_deferrals or age > policy.max_age:
        _exhausted(task, count=state.count, age=age, policy=policy, reason=reason)

    reserved = slot_in is not None
    if slot_in is not None:
        delay = retry_after
        slot: float | None = now + slot_in
    else:
        delay = min(retry_after, policy.max_delay) + random.uniform(0, policy.jitter)
        slot = state.slot if paid else None
    headers = {
        **(request.headers or {}),
        HEADER_COUNT: count,
        HEADER_SINCE: since,
        HEADER_RESERVED: sorted(paid),
        HEADER_SLOT: slot,
    }
    task.signature_from_request(countdown=delay, headers=headers).apply_async()
    logger.debug(
        "deferred %s[%s] by %.3fs (%s; deferral %d%s)",
        task.name,
        request.id,
        delay,
        reason,
        count,
        ", slot reserved" if reserved else "",
    )
    signals.task_deferred.send(
        sender=task,
        task_id=request.id,
        delay=delay,
        deferrals=count,
        reserved=bool(reserved),
        reason=reason,
    )
    raise Ignore(f"deferred by taskguard for {delay:.3f}s: {reason}")


def _exhausted(
    task: Any, *, count: int, age: float, policy: DeferralPolicy, reason: str
) -> NoReturn:
    request = task.request
    signals.deferral_exhausted.send(
        sender=task, task_id=request.id, deferrals=count, age=age, policy=policy.on_exhausted
    )
    message = (
        f"{task.name}[{request.id}] deferred {count} times over {age:.1f}s "
        f"(caps: {policy.max_deferrals} deferrals, {policy.max_age:.0f}s); last denial: {reason}"
    )
    if policy.on_exhausted == "fail":
        raise DeferralExhausted(message, task_id=request.id, deferrals=count, age=age)
    if policy.on_exhausted == "dead_letter":
        task.signature_from_request(queue=policy.dead_letter_queue).apply_async()
        logger.error("%s; dead-lettered to queue %r", message, policy.dead_letter_queue)
        raise Ignore(f"dead-lettered to {policy.dead_letter_queue}")
    logger.error("%s; dropped (on_deferral_exhausted='drop')", message)
    raise Ignore("dropped by taskguard: deferral cap reached")
