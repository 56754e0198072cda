"""One guarded task run: admitted in one round trip at start, released in one at the end.

:func:`admit_run` turns every guard of the task into backend ops, admits them together
(all or nothing), and on a denial waits, defers, skips or fails as the denying guard says.
What the run holds (lock leases, concurrency slots, uniqueness claims) is renewed by the
process heartbeat and given back by :func:`release_run` on every outcome.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeGuard, cast

from celery.exceptions import Ignore, Retry

from taskguard import _instrument, signals
from taskguard.backend.base import Backend
from taskguard.backend.memory import local_backend
from taskguard.backend.ops import BreakerOp, Held, LeaseOp, Op
from taskguard.backend.registry import kind_of
from taskguard.errors import BackendUnavailable
from taskguard.guards.admission import Outcome, admit
from taskguard.guards.base import DEFER, Guard, RunContext
from taskguard.guards.breaker_events import TRANSITIONS, announce
from taskguard.guards.breaker_spec import CircuitBreaker
from taskguard.heartbeat import heartbeat_for

from ._deferral import DeferralState, defer
from ._settings import TaskSettings

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
    lost_keys: set[str] = field(default_factory=set, repr=False)

    @property
    def fencing_token(self) -> int | None:
        """The fencing token of the run's lock (the first one, if it holds several)."""
        return next(iter(self.fencing_tokens.values()), None)


def _holds(op: Op) -> TypeGuard[Held]:
    return bool(kind_of(op).holds(op))


def _is_claim(op: Op) -> TypeGuard[LeaseOp]:
    """A publish-time uniqueness claim (it belongs to the message, not to one run)."""
    return getattr(op, "purpose", None) == "claim"


@dataclass
class Run:
    """A task run in progress: the guards it passed and what it holds where."""

    guards: list[Guard]
    ops: list[Op]
    holder: Backend  # the shared backend, or the process-local one when admitted offline
    held: list[Held]
    info: RunInfo
    breakers: list[tuple[Guard, Held]] = field(default_factory=list)
    handles: list[int] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


def _pairs(task: Any, config: TaskSettings, request: Any, args: Any, kwargs: Any) -> Any:
    backend: Backend = task.taskguard_backend
    return [
        (guard, op)
        for guard in config.guards
        for op in guard.task_ops(backend.keys, args, kwargs, request.id)
    ]


def admit_run(
    task: Any, config: TaskSettings, request: Any, args: Sequence[Any], kwargs: dict[str, Any]
) -> Run:
    """Admit this run of ``task`` or end it (defer, skip, fail); returns what it holds."""
    state = DeferralState.from_headers(request.headers)
    if not _instrument.on:
        return _admit_run(task, config, request, args, kwargs, state, _instrument.IDLE)
    with _instrument.activity(
        _instrument.ADMIT,
        task=task.name,
        task_id=request.id,
        guards=config.guards,
        deferrals=state.count,
    ) as act:
        return _admit_run(task, config, request, args, kwargs, state, act)


def _admit_run(  # noqa: PLR0917 - admit_run's arguments, with what it read and watches
    task: Any,
    config: TaskSettings,
    request: Any,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    state: DeferralState,
    act: Any,
) -> Run:
    backend: Backend = task.taskguard_backend
    pairs = _pairs(task, config, request, args, kwargs)
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
    deadline = time.monotonic() + max((g.wait for g in guards), default=0.0)
    waited = 0.0
    while True:
        outcome = admit(backend, guards, ops, reserve_within=reserve_within)
        if outcome.admission.allowed:
            if act.on:
                decision = "degraded" if outcome.degraded else "allowed"
                act.note(
                    decision=decision, retry_after=0.0, degraded=outcome.degraded, waited=waited
                )
            return _admitted(task, request, guards=guards, ops=ops, outcome=outcome)
        index = outcome.admission.denied or 0
        op = ops[index]
        left = deadline - time.monotonic()
        wakeup: str | None = getattr(op, "wakeup_key", None)
        if wakeup and left > 0 and not outcome.degraded:
            # A bounded wait in the worker, woken by the holder's release.
            began = time.monotonic()
            try:
                backend.wait_for_wakeup(wakeup, min(left, outcome.admission.retry_after))
                continue
            except BackendUnavailable as exc:
                logger.warning("%s[%s]: wait interrupted: %s", task.name, request.id, exc)
            finally:
                waited += time.monotonic() - began
        act.note(
            guard=guards[index],
            retry_after=outcome.admission.retry_after,
            degraded=outcome.degraded,
            waited=waited,
        )
        _denied(task, request, config, state, guards[index], op, ops, outcome, eager=eager, act=act)


def _admitted(
    task: Any, request: Any, *, guards: list[Guard], ops: list[Op], outcome: Outcome
) -> Run:
    backend: Backend = task.taskguard_backend
    info = RunInfo()
    tokens = outcome.admission.tokens or (0,) * len(ops)
    request.taskguard = info
    holder: Backend = backend
    if outcome.degraded:  # held only in this process, by the `local` policy
        holder = local_backend(backend)
        taken = set(outcome.local)
    else:
        taken = set(range(len(ops)))
    context = RunContext(sender=task, task_id=request.id, backend=holder)
    held = [op for i, op in enumerate(ops) if i in taken and _holds(op)]
    breakers: list[tuple[Guard, Held]] = []
    probes: list[Held] = []
    for i, (guard, op, token) in enumerate(zip(guards, ops, tokens, strict=True)):
        if i not in taken:
            continue
        fence_key = getattr(op, "fence_key", None)
        if fence_key is not None and token:
            info.fencing_tokens[op.key] = token
        if guard.records_outcome:
            breakers.append((guard, cast(Held, op)))
        if guard.on_admitted(op, token, context):
            probes.append(cast(Held, op))
    run = Run(guards, ops, holder, held, info, breakers)

    def lost(lease: Held) -> None:
        info.lease_lost = True
        info.lost_keys.add(lease.key)
        signals.lease_lost.send(sender=task, task_id=request.id, key=lease.key)

    heartbeat = heartbeat_for(holder)
    run.handles = [heartbeat.add(lease, lost) for lease in held]
    run.handles += [heartbeat.add(probe) for probe in probes]
    if signals.guard_acquired.receivers:
        signals.guard_acquired.send(
            sender=task, task_id=request.id, guards=guards, degraded=outcome.degraded
        )
    return run


def _denied(  # noqa: PLR0917 - one call site; these are the facts of the denial
    task: Any,
    request: Any,
    config: TaskSettings,
    state: DeferralState,
    guard: Guard,
    op: Op,
    ops: list[Op],
    outcome: Outcome,
    *,
    eager: bool,
    act: Any,
) -> NoReturn:
    backend: Backend = task.taskguard_backend
    retry_after = outcome.admission.retry_after
    online = not outcome.degraded
    signals.guard_denied.send(
        sender=task,
        task_id=request.id,
        guard=guard,
        key=op.key,
        retry_after=retry_after,
        degraded=outcome.degraded,
    )
    verdict = (
        guard.on_denied(op, retry_after, RunContext(task, request.id, backend)) if online else DEFER
    )
    decision = _DECISIONS.get(verdict.action, "failed")
    act.note(decision="failed" if eager and decision == "deferred" else decision)
    if verdict.action == "duplicate":
        logger.info("%s[%s] is a %s; skipped", task.name, request.id, verdict.reason)
        raise Ignore(verdict.reason)
    if verdict.action == "skip":
        _give_up_claims(backend, ops)
        logger.info("%s[%s] %s", task.name, request.id, verdict.reason)
        raise Ignore(verdict.reason)
    if verdict.action == "fail":
        _give_up_claims(backend, ops)
        raise guard.denied_error(retry_after, op.key)
    if eager:
        _give_up_claims(backend, ops)
        raise guard.denied_error(retry_after, op.key)
    reserved = outcome.admission.reserved
    suffix = "" if online else " (backend unavailable)"
    defer(
        task,
        retry_after=guard.conflict_delay(retry_after)
        if online or guard.on_outage == "local"
        else retry_after,
        reserved=[o.key for o in ops if kind_of(o).bucket] if reserved else [],
        state=state,
        policy=config.deferral,
        reason=f"{guard!r} on {op.key}{suffix}",
        cause=guard.kind if online else "outage",
        on_give_up=lambda: _give_up_claims(backend, ops),
    )


#: A refusing guard's verdict -> the admission's decision, as instrumentation reports it.
_DECISIONS = {"defer": "deferred", "skip": "skipped", "duplicate": "duplicate", "fail": "failed"}


def _give_up_claims(backend: Backend, ops: Sequence[Op]) -> None:
    """This message will not run: free its publish-time claims for new publishes."""
    claims = [op for op in ops if _is_claim(op)]
    if claims:
        try:
            backend.release(claims)  # owner-checked: only claims this message holds
        except BackendUnavailable as exc:
            logger.warning("claims kept until they expire: %s", exc)


def release_run(
    task: Any, request: Any, run: Run, outcome: str, exc: BaseException | None = None
) -> None:
    """Give back what the run holds and record breaker outcomes, in one round trip.

    Never raises: a task's result must not depend on the release.
    """
    if not _instrument.on:
        _release_run(task, request, run, outcome, exc, _instrument.IDLE)
        return
    with _instrument.activity(
        _instrument.RELEASE, task=task.name, task_id=request.id, guards=run.guards, outcome=outcome
    ) as act:
        _release_run(task, request, run, outcome, exc, act)


def _release_run(  # noqa: PLR0917 - release_run's arguments and its activity
    task: Any, request: Any, run: Run, outcome: str, exc: BaseException | None, act: Any
) -> None:
    heartbeat = heartbeat_for(run.holder)
    for handle in run.handles:
        heartbeat.remove(handle)
    held = run.held
    keep: list[Held] = []
    if outcome == "retry":
        # The retry message is this message again: keep its claims for its time in the
        # queue, so a duplicate cannot be published meanwhile (the retry re-takes them).
        keep = [dataclasses.replace(op, ttl=_queue_ttl(run, op)) for op in held if _is_claim(op)]
        held = [op for op in held if not _is_claim(op)]
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
    except BackendUnavailable as down:
        logger.warning(
            "%s[%s]: could not release %d lease(s), they expire by TTL: %s",
            task.name,
            request.id,
            len(held),
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
    if signals.guard_released.receivers:
        signals.guard_released.send(
            sender=task,
            task_id=request.id,
            guards=run.guards,
            outcome=outcome,
            duration=time.monotonic() - run.started,
        )


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
