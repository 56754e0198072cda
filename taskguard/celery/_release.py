"""The end of a guarded task run: give back what it holds and record breaker outcomes."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, cast

from celery.exceptions import Retry

from taskguard import _instrument, signals
from taskguard.backend.ops import BreakerOp, Held, LeaseOp
from taskguard.errors import BackendError, BackendUnavailable
from taskguard.guards.base import Guard
from taskguard.guards.breaker_events import TRANSITIONS, announce
from taskguard.guards.breaker_spec import CircuitBreaker
from taskguard.heartbeat import heartbeat_for

from ._parking import hand_back
from ._run_state import Run, is_claim

__all__ = ["release_run"]

logger = logging.getLogger("taskguard.task")


def release_run(
    task: Any, request: Any, run: Run, outcome: str, exc: BaseException | None = None
) -> None:
    """Give back what the run holds and record breaker outcomes, in one round trip.

    Never raises: a task's result must not depend on the release.

    A run that holds nothing and records no breaker outcome (rate limits and quotas
    spend, they do not hold) makes no call here, and reports no release activity: a
    Sentry span per task for no work would cost more than the guard itself.
    """
    if not _instrument.on or not (run.held or run.breakers):
        _release_run(task, request, run, outcome, exc, _instrument.IDLE)
        return
    with _instrument.activity(
        _instrument.RELEASE, task=task.name, task_id=request.id, guards=run.guards, outcome=outcome
    ) as act:
        _release_run(task, request, run, outcome, exc, act)


def _release_run(  # noqa: PLR0917 - release_run's arguments and its activity
    task: Any, request: Any, run: Run, outcome: str, exc: BaseException | None, act: Any
) -> None:
    _stop_renewing(run)
    held = run.held
    keep: list[Held] = []
    if outcome == "retry":
        # The retry message is this message again: keep its claims for its time in the
        # queue, so a duplicate cannot be published meanwhile (the retry re-takes them).
        keep = [dataclasses.replace(op, ttl=_queue_ttl(run, op)) for op in held if is_claim(op)]
        held = [op for op in held if not is_claim(op)]
    duration = time.monotonic() - run.started
    recorded: list[Held] = [
        dataclasses.replace(cast(BreakerOp, op), mode=_breaker_code(guard, outcome, exc, duration))
        for guard, op in run.breakers
    ]
    try:
        results = run.holder.release([*held, *recorded]) if held or recorded else []
        released, transitions = results[: len(held)], results[len(held) :]
        if keep:
            run.holder.renew(keep)
    except (BackendUnavailable, BackendError) as down:
        # Never raised: the task's result is already decided. A BackendError (not an
        # outage) is an error to fix, so it is logged as one.
        logger.log(
            logging.WARNING if isinstance(down, BackendUnavailable) else logging.ERROR,
            "%s[%s]: could not release %d lease(s) of guard(s) %s, they expire by TTL: %s",
            task.name,
            request.id,
            len(held),
            ", ".join(repr(g) for g in run.guards),
            down,
        )
    else:
        if act.on:
            act.note(lost=released.count(False))
        for (guard, _), code in zip(run.breakers, transitions, strict=True):
            if code in TRANSITIONS:
                announce(cast(CircuitBreaker, guard).name, *TRANSITIONS[code], task_id=request.id)
        for lease, ok in zip(held, released, strict=True):
            if not ok and lease.key not in run.info.lost_keys:
                logger.warning(
                    "%s[%s]: lease %s was lost before release", task.name, request.id, lease.key
                )
                signals.lease_lost.send(sender=task, task_id=request.id, key=lease.key)
        parked = [lease.key for lease, code in zip(held, released, strict=True) if code == 2]
        if parked:  # a release found tasks parked on its guard: hand them back
            hand_back(task.app, run.holder, parked)
    if signals.guard_released.receivers:
        signals.guard_released.send(
            sender=task,
            task_id=request.id,
            guards=run.guards,
            outcome=outcome,
            duration=time.monotonic() - run.started,
        )


def _stop_renewing(run: Run) -> None:
    """Take the run's leases and probes off the heartbeat (a run that spends only, rate
    limits and quotas, put none there)."""
    if run.handles:
        heartbeat = heartbeat_for(run.holder)
        for handle in run.handles:
            heartbeat.remove(handle)


def _breaker_code(guard: Guard, outcome: str, exc: BaseException | None, duration: float) -> str:
    """What a task run's outcome counts as for a breaker."""
    if outcome in ("ignored", "rejected", "aborted"):
        return "i"
    breaker = cast(CircuitBreaker, guard)
    if outcome == "success":
        return breaker.outcome(None, duration)
    if isinstance(exc, Retry):
        # self.retry(exc=...) after a failed call: that failure counts; a bare retry
        # says nothing about the downstream service.
        if not isinstance(exc.exc, BaseException):
            return "i"
        exc = exc.exc
    return breaker.outcome(exc, duration)


def _queue_ttl(run: Run, claim: LeaseOp) -> float:
    for guard in run.guards:
        if getattr(guard, "at_publish", False):
            return float(getattr(guard, "queue_ttl", claim.ttl))
    return claim.ttl
