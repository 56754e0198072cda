"""One guarded task run: admitted in one round trip at start, released in one at the end.

:func:`admit_run` turns every guard of the task into backend ops, admits them together
(all or nothing), and on a denial defers, skips, waits or fails as the denying guard says.
What the run holds (lock leases, uniqueness claims) is renewed by the process heartbeat
and given back by :func:`release_run` on every outcome.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from celery.exceptions import Ignore

from taskguard import signals
from taskguard.backend.base import Backend
from taskguard.backend.ops import Held, LeaseOp, Op, RateOp, SlotOp
from taskguard.deferral import DeferralState, defer
from taskguard.errors import BackendUnavailable
from taskguard.guards.admission import Outcome, admit
from taskguard.guards.base import Guard
from taskguard.guards.lock import Lock
from taskguard.settings import TaskSettings

__all__ = ["Run", "RunInfo", "admit_run", "release_run"]

logger = logging.getLogger("taskguard.task")


@dataclass
class RunInfo:
    """What the guards gave this run, as ``self.request.taskguard`` inside the task.

    Attributes:
        fencing_tokens: Fencing token per lock key held by this run.
        lease_lost: Set (from the heartbeat thread) when a lease of this run was found
            expired or taken over while the task was still running. A task doing work
            that must stay exclusive should check it, and the fencing token, before
            committing that work.
    """

    fencing_tokens: dict[str, int] = field(default_factory=dict)
    lease_lost: bool = False

    @property
    def fencing_token(self) -> int | None:
        """The fencing token of the run's lock (the first one, if it holds several)."""
        return next(iter(self.fencing_tokens.values()), None)


@dataclass
class Run:
    """A task run in progress: the guards it passed and what it holds."""

    guards: list[Guard]
    ops: list[Op]
    backend: Backend
    info: RunInfo
    degraded: bool = False
    handles: list[int] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def held(self) -> list[Held]:
        """The leases and slots to give back at the end (none when admitted offline)."""
        if self.degraded:
            return []
        return [
            op
            for op in self.ops
            if isinstance(op, SlotOp) or (isinstance(op, LeaseOp) and not op.drop)
        ]


def admit_run(
    task: Any, config: TaskSettings, request: Any, args: Sequence[Any], kwargs: dict[str, Any]
) -> Run:
    """Admit this run of ``task`` or end it (defer, skip, fail); returns what it holds."""
    backend: Backend = task.taskguard_backend
    state = DeferralState.from_headers(request.headers)
    pairs = [
        (guard, op)
        for guard in config.guards
        for op in guard.task_ops(backend.keys, args, kwargs, request.id)
    ]
    paid = state.honoured(
        [op for _, op in pairs],
        now=time.time(),
        retries=request.retries,
        grace=config.deferral.reservation_grace,
    )
    # A bucket whose slot this message already paid for is not charged again.
    guards = [guard for guard, op in pairs if op.key not in paid]
    ops = [op for _, op in pairs if op.key not in paid]
    eager = bool(request.is_eager)
    deferral = config.deferral
    reserve_within = 0.0 if eager else min(deferral.reserve_within, deferral.max_delay)
    wait = max((g.wait for g in guards), default=0.0)
    deadline = time.monotonic() + wait
    while True:
        outcome = admit(backend, guards, ops, reserve_within=reserve_within)
        if outcome.admission.allowed:
            return _admitted(
                task, request, backend=backend, guards=guards, ops=ops, outcome=outcome
            )
        index = outcome.admission.denied or 0
        op = ops[index]
        left = deadline - time.monotonic()
        wakeup = op.wakeup_key if isinstance(op, (LeaseOp, SlotOp)) else None
        if wakeup and left > 0 and not outcome.degraded:
            # A bounded wait in the worker, woken by the holder's release.
            backend.wait_for_wakeup(wakeup, min(left, outcome.admission.retry_after))
            continue
        _denied(
            task,
            request,
            config=config,
            state=state,
            guard=guards[index],
            op=op,
            ops=ops,
            outcome=outcome,
            eager=eager,
        )


def _admitted(
    task: Any,
    request: Any,
    *,
    backend: Backend,
    guards: list[Guard],
    ops: list[Op],
    outcome: Outcome,
) -> Run:
    info = RunInfo()
    for op, token in zip(ops, outcome.admission.tokens or [0] * len(ops), strict=True):
        if isinstance(op, LeaseOp) and op.fence_key is not None:
            info.fencing_tokens[op.key] = token
    request.taskguard = info
    run = Run(guards, ops, backend, info, degraded=outcome.degraded)

    def lost(lease: Held) -> None:
        info.lease_lost = True
        signals.lease_lost.send(sender=task, task_id=request.id, key=lease.key)

    run.handles = [backend.heartbeat.add(lease, lost) for lease in run.held()]
    for op in run.held():
        if isinstance(op, SlotOp):
            signals.slot_acquired.send(sender=task, task_id=request.id, key=op.key, limit=op.limit)
    if signals.guard_acquired.receivers:
        signals.guard_acquired.send(
            sender=task, task_id=request.id, guards=guards, degraded=outcome.degraded
        )
    return run


def _denied(
    task: Any,
    request: Any,
    *,
    config: TaskSettings,
    state: DeferralState,
    guard: Guard,
    op: Op,
    ops: list[Op],
    outcome: Outcome,
    eager: bool,
) -> NoReturn:
    result = outcome.admission
    retry_after = result.retry_after
    signals.guard_denied.send(
        sender=task,
        task_id=request.id,
        guard=guard,
        key=op.key,
        retry_after=retry_after,
        degraded=outcome.degraded,
    )
    if isinstance(op, LeaseOp) and op.purpose == "claim" and not outcome.degraded:
        holder = task.taskguard_backend.owner(op.key)
        signals.duplicate_rejected.send(
            sender=task, task_id=request.id, holder=holder, key=op.key, stage="run"
        )
        logger.info("%s[%s] is a duplicate of %s; skipped", task.name, request.id, holder)
        raise Ignore(f"duplicate of {holder} ({op.key})")
    if eager:
        raise guard.denied_error(retry_after, op.key)
    if isinstance(guard, Lock) and isinstance(op, LeaseOp) and not outcome.degraded:
        signals.lock_conflict.send(
            sender=task,
            task_id=request.id,
            key=op.key,
            retry_after=retry_after,
            action=guard.on_conflict,
        )
        if guard.on_conflict == "fail":
            raise guard.denied_error(retry_after, op.key)
        if guard.on_conflict == "skip":
            logger.info("%s[%s] skipped: %s is held", task.name, request.id, op.key)
            raise Ignore(f"skipped: {op.key} is held")
    if isinstance(op, SlotOp) and not outcome.degraded:
        signals.slot_denied.send(
            sender=task, task_id=request.id, key=op.key, limit=op.limit, retry_after=retry_after
        )
    if not outcome.degraded:
        retry_after = guard.conflict_delay(retry_after)
    reserved = [o.key for o in ops if isinstance(o, RateOp)] if result.reserved else []
    suffix = " (backend unavailable)" if outcome.degraded else ""
    defer(
        task,
        retry_after=retry_after,
        reserved=reserved,
        state=state,
        policy=config.deferral,
        reason=f"{guard!r} on {op.key}{suffix}",
    )


def release_run(task: Any, request: Any, run: Run, outcome: str) -> None:
    """Give back what the run holds, in one round trip; never raises."""
    heartbeat = run.backend.heartbeat
    for handle in run.handles:
        heartbeat.remove(handle)
    held = run.held()
    if held:
        try:
            released = run.backend.release(held)
        except BackendUnavailable as exc:
            logger.warning(
                "%s[%s]: could not release %d lease(s), they expire by TTL: %s",
                task.name,
                request.id,
                len(held),
                exc,
            )
        else:
            for lease, ok in zip(held, released, strict=True):
                if not ok:
                    logger.warning(
                        "%s[%s]: lease %s was lost before release", task.name, request.id, lease.key
                    )
                    signals.lease_lost.send(sender=task, task_id=request.id, key=lease.key)
    if signals.guard_released.receivers:
        signals.guard_released.send(
            sender=task,
            task_id=request.id,
            guards=run.guards,
            outcome=outcome,
            duration=time.monotonic() - run.started,
        )
