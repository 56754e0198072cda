"""One guarded task run: admitted in one round trip at start, released in one at the end.

:func:`admit_run` turns every guard of the task into backend ops, admits them together
(all or nothing), and on a denial waits, defers, skips or fails as the denying guard says.
What the run holds (lock leases, concurrency slots, uniqueness claims) is renewed by the
process heartbeat and given back by :func:`._release.release_run` on every outcome.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any, NoReturn, cast

from celery.exceptions import Ignore

from taskguard import _instrument, signals
from taskguard.backend.base import Backend
from taskguard.backend.memory import local_backend
from taskguard.backend.ops import Held, Op
from taskguard.backend.registry import kind_of
from taskguard.errors import BackendError, BackendUnavailable
from taskguard.guards.admission import Outcome, admit
from taskguard.guards.base import DEFER, Guard, RunContext
from taskguard.heartbeat import heartbeat_for

from ._deferral import DeferralState, defer, park
from ._parking import claim, handback_of, handoff_owner, parking_for, parks
from ._run_state import Run, RunInfo, give_up_claims, holds
from ._settings import TaskSettings
from ._shadow import evaluate_shadow

__all__ = ["admit_run"]

logger = logging.getLogger("taskguard.task")


def _pairs(task: Any, config: TaskSettings, request: Any, args: Any, kwargs: Any) -> Any:
    backend: Backend = task.taskguard_backend
    return [
        (guard, guard.for_request(op, request) if guard.reads_request else op)
        for guard in config.guards
        for op in guard.task_ops(backend.keys, args, kwargs, request.id)
    ]


def admit_run(
    task: Any, config: TaskSettings, request: Any, args: Sequence[Any], kwargs: dict[str, Any]
) -> Run:
    """Admit this run of ``task`` or end it (defer, skip, fail); returns what it holds."""
    state = DeferralState.from_headers(request.headers)
    if not _instrument.on:
        run = _admit_run(task, config, request, args, kwargs, state, _instrument.IDLE)
    else:
        with _instrument.activity(
            _instrument.ADMIT,
            task=task.name,
            task_id=request.id,
            guards=config.guards,
            deferrals=state.count,
        ) as act:
            run = _admit_run(task, config, request, args, kwargs, state, act)
    if config.shadow:
        evaluate_shadow(task, config.shadow, request, call=(args, kwargs), run=run)
    return run


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
    handback = handback_of(request)
    if handback is not None:
        pairs = _claim_handback(task, config, request, state, pairs=pairs, key=handback)
    paid = state.honoured(
        [op for _, op in pairs],
        now=time.time(),
        retries=request.retries,
        grace=config.deferral.reservation_grace,
    )
    if paid and state.reservation is not None:
        # Sent ahead of its slot by up to reservation_lead (so a busy worker still has
        # it on time): the last moments are waited out here, and it starts on the slot.
        early = state.reservation.slot - time.time()
        if early > 0:
            time.sleep(min(early, config.deferral.reservation_lead))
    # A bucket whose slot this message already paid for is not charged again.
    guards = [guard for guard, op in pairs if op.key not in paid]
    ops = [op for _, op in pairs if op.key not in paid]
    eager = bool(request.is_eager)
    deferral = config.deferral
    reserve_within = 0.0 if eager else min(deferral.reserve_within, deferral.max_delay)
    deadline = time.monotonic() + max((g.wait for g in guards), default=0.0)
    try:
        return _admit_loop(
            task,
            config,
            request,
            state=state,
            guards=guards,
            ops=ops,
            reserve_within=reserve_within,
            deadline=deadline,
            act=act,
        )
    except BackendError as exc:
        # Not an outage (a missing ACL permission, a script error...): no outage policy
        # may run the task unguarded, and retrying will not cure it. The task fails with
        # the error; the worker goes on.
        logger.error(
            "%s[%s]: taskguard cannot check guard(s) %s, the task fails: %s",
            task.name,
            request.id,
            ", ".join(exc.guards or tuple(repr(g) for g in guards)),
            exc.reason,
        )
        give_up_claims(backend, ops)
        raise


def _claim_handback(
    task: Any,
    config: TaskSettings,
    request: Any,
    state: DeferralState,
    *,
    pairs: list[tuple[Guard, Op]],
    key: str,
) -> list[tuple[Guard, Op]]:
    """A handed-back message: run it only if it claims its ticket, with the room that
    was held for it (its op on ``key`` takes the hand-off owner token)."""
    backend: Backend = task.taskguard_backend
    try:
        claimed = claim(backend, request)
    except (BackendUnavailable, BackendError) as exc:
        # Unclaimed, it must not run (a sweep may publish it again): it comes back
        # still marked, and claims then.
        defer(
            task,
            retry_after=1.0,
            reserved=[],
            state=state,
            policy=config.deferral,
            reason=f"cannot claim its hand-back: {exc}",
            cause="outage",
        )
    if not claimed:
        logger.info("%s[%s]: a copy of this hand-back already ran; skipped", task.name, request.id)
        raise Ignore("taskguard: duplicate copy of a handed-back task")
    request.taskguard_claimed = True
    owner = handoff_owner(request.id)
    return [
        (guard, dataclasses.replace(op, owner=owner) if op.key == key and parks(op) else op)  # type: ignore[type-var]
        for guard, op in pairs
    ]


def _admit_loop(
    task: Any,
    config: TaskSettings,
    request: Any,
    *,
    state: DeferralState,
    guards: list[Guard],
    ops: list[Op],
    reserve_within: float,
    deadline: float,
    act: Any,
) -> Run:
    backend: Backend = task.taskguard_backend
    eager = bool(request.is_eager)
    waited = 0.0
    wake: tuple[str, float] | None = None
    while True:
        if wake is None:
            outcome = admit(backend, guards, ops, reserve_within=reserve_within)
        else:
            # A bounded wait in the worker, woken by the holder's release; on Redis the
            # wait and the next admission go in one write (Backend.admit_after_wakeup).
            # An outage meanwhile is the outage policies' to decide, as at any admission.
            began = time.monotonic()
            outcome = admit(backend, guards, ops, reserve_within=reserve_within, wake=wake)
            waited += time.monotonic() - began
            wake = None
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
            wake = (wakeup, min(left, outcome.admission.retry_after))
            continue
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
    held = [op for i, op in enumerate(ops) if i in taken and holds(op)]
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
    if held or probes:  # rate limits and quotas spend: nothing for the heartbeat

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
        give_up_claims(backend, ops)
        logger.info("%s[%s] %s", task.name, request.id, verdict.reason)
        raise Ignore(verdict.reason)
    if verdict.action == "fail":
        give_up_claims(backend, ops)
        raise guard.denied_error(retry_after, op.key)
    if verdict.action == "superseded":
        give_up_claims(backend, ops)
        try:  # the result says so, where there is a result backend
            task.update_state(task_id=request.id, state=SUPERSEDED, meta=dict(verdict.meta or {}))
        except Exception as exc:  # no result backend, or it is down: the log says it
            logger.debug("%s[%s]: result state not stored: %r", task.name, request.id, exc)
        logger.info("%s[%s] %s", task.name, request.id, verdict.reason)
        raise Ignore(verdict.reason)
    if eager:
        give_up_claims(backend, ops)
        raise guard.denied_error(retry_after, op.key)
    reserved = outcome.admission.reserved
    suffix = "" if online else " (backend unavailable)"
    parking = parking_for(backend) if online and config.deferral.park else None
    if parking is not None:
        fair_group = getattr(guard, "fair_group", None)
        park(  # ends the run, unless it could not park
            task,
            op=op,
            group=fair_group(request.args or (), request.kwargs or {}) if fair_group else None,
            parking=parking,
            state=state,
            policy=config.deferral,
            reason=f"{guard!r} on {op.key}",
            cause=guard.kind,
            on_give_up=lambda: give_up_claims(backend, ops),
        )
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
        on_give_up=lambda: give_up_claims(backend, ops),
        headers=verdict.headers,
    )


#: A refusing guard's verdict -> the admission's decision, as instrumentation reports it.
_DECISIONS = {
    "defer": "deferred",
    "skip": "skipped",
    "duplicate": "duplicate",
    "fail": "failed",
    "superseded": "skipped",
}
#: The result state of a debounced call a newer one superseded (it never runs).
SUPERSEDED = "SUPERSEDED"
