"""How a denied task comes back later without spending its retries.

The task is re-published with the same id and arguments after ``retry_after`` (plus
jitter), and the current run ends with :class:`celery.exceptions.Ignore`, so the result
backend keeps the task PENDING and ``request.retries`` is untouched. Deferral state rides in
message headers, merged into the existing ones (so e.g. ``sentry-trace`` survives):

* ``taskguard-deferrals``: how many times the task was deferred;
* ``taskguard-deferred-since``: when it was first deferred (epoch seconds);
* ``taskguard-reservation``: the rate-limit buckets whose slot this message paid for,
  when that slot starts, and the ``retries`` count it belongs to.

A reservation is honoured once, by the run it was made for (a ``self.retry()`` copies the
headers but not the reservation's ``retries``), and only if the task comes back on time:
within half the tightest bucket's interval after the slot, or ``reservation_grace``,
whichever is longer. A task delivered later contests again, so a late-delivered batch of
reserved tasks can never start as a burst; its unused slot is one wasted token.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from celery.exceptions import Ignore

from taskguard import _instrument, signals
from taskguard.backend.ops import Op, RateOp
from taskguard.backend.parking import Parking
from taskguard.errors import BackendError, BackendUnavailable, DeferralExhausted

from ._parking import HEADER_HANDBACK, lane_of, pack, parks, publish
from ._settings import DeferralPolicy

__all__ = [
    "HEADER_COUNT",
    "HEADER_RESERVATION",
    "HEADER_SINCE",
    "DeferralState",
    "Reservation",
    "carried_headers",
    "defer",
    "next_deferral",
    "park",
]

logger = logging.getLogger("taskguard.deferral")

HEADER_COUNT = "taskguard-deferrals"
HEADER_SINCE = "taskguard-deferred-since"
HEADER_RESERVATION = "taskguard-reservation"
_OURS = (HEADER_COUNT, HEADER_SINCE, HEADER_RESERVATION, HEADER_HANDBACK)


@dataclass(frozen=True)
class Reservation:
    """Rate-limit slots a message has paid for.

    Attributes:
        keys: The buckets (full keys) whose token at ``slot`` is taken.
        slot: When the slot starts, in epoch seconds (the deferring worker's clock, the
            same clock Celery computes the message's ETA with).
        retries: ``request.retries`` of the run the reservation belongs to.
    """

    keys: frozenset[str]
    slot: float
    retries: int

    def as_header(self) -> dict[str, Any]:
        return {"keys": sorted(self.keys), "slot": self.slot, "retries": self.retries}

    @classmethod
    def from_header(cls, value: Any) -> Reservation | None:
        if not value:
            return None
        return cls(frozenset(map(str, value["keys"])), float(value["slot"]), int(value["retries"]))


@dataclass(frozen=True)
class DeferralState:
    """What the current message says about earlier deferrals."""

    count: int = 0
    since: float | None = None
    reservation: Reservation | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, Any] | None) -> DeferralState:
        """Read the state from a task request's headers (missing or malformed: fresh)."""
        if not headers or HEADER_COUNT not in headers:
            return _FRESH
        try:
            since = headers.get(HEADER_SINCE)
            return cls(
                count=int(headers[HEADER_COUNT] or 0),
                since=float(since) if since is not None else None,
                reservation=Reservation.from_header(headers.get(HEADER_RESERVATION)),
            )
        except (TypeError, ValueError, KeyError):
            logger.warning("ignoring malformed taskguard deferral headers: %r", headers)
            return _FRESH

    def honoured(
        self, ops: Sequence[Op], *, now: float, retries: int, grace: float
    ) -> frozenset[str]:
        """The reserved buckets this run may skip: all of them if on time, else none."""
        reservation = self.reservation
        if reservation is None or reservation.retries != retries:
            return frozenset()
        intervals = [
            op.interval for op in ops if isinstance(op, RateOp) and op.key in reservation.keys
        ]
        if not intervals:
            return frozenset()
        late = now - reservation.slot
        if late > max(min(intervals) / 2, grace):
            logger.debug("reserved slot missed by %.3fs; contesting again", late)
            return frozenset()
        return reservation.keys


_FRESH = DeferralState()


def defer(
    task: Any,
    *,
    retry_after: float,
    reserved: Collection[str],
    state: DeferralState,
    policy: DeferralPolicy,
    reason: str,
    cause: str = "",
    on_give_up: Callable[[], None] | None = None,
    headers: Mapping[str, Any] | None = None,
) -> NoReturn:
    """Re-publish the running task to run after ``retry_after``, then end this run.

    The message goes to the deferral lane of the queue it came from (see
    :mod:`._parking`), so it is back in a worker at once, not behind the queue's backlog.

    Args:
        task: The bound Celery task whose ``request`` is being deferred.
        retry_after: Seconds until the guards can admit it.
        reserved: Buckets whose slot at ``retry_after`` this denial reserved (empty for
            none): the task comes back exactly then, without jitter, and skips them.
        state: The deferral state of the current message.
        policy: Caps and jitter.
        reason: Human-readable cause, for logs and signals.
        cause: What refused the task, for metrics: the refusing guard's kind, or
            ``outage`` (low-cardinality, unlike ``reason``).
        on_give_up: Called when the cap is hit, before failing, dropping or
            dead-lettering (the run frees its uniqueness claims there).
        headers: Added to the deferred message's headers (a guard's own state).

    Raises:
        Ignore: Always, after the task was re-published (or dropped / dead-lettered).
        DeferralExhausted: When the cap is hit and ``policy.on_exhausted == "fail"``.
    """
    request = task.request
    now = time.time()
    count, since = next_deferral(task, state, policy, reason, on_give_up)
    extra = dict(headers or {})
    headers = {**carried_headers(request), **extra, HEADER_COUNT: count, HEADER_SINCE: since}
    if reserved:
        # Sent a little ahead, into the worker's ETA timer, then waited out on admission:
        # a pool process busy for a few ms at the slot would otherwise start it late.
        delay = retry_after
        countdown = max(retry_after - policy.reservation_lead, 0.0)
        reservation = Reservation(frozenset(reserved), now + retry_after, request.retries)
        headers[HEADER_RESERVATION] = reservation.as_header()
    else:
        delay = countdown = min(retry_after, policy.max_delay) + random.uniform(0, policy.jitter)
        headers[HEADER_RESERVATION] = None
    lane = lane_of(task.app, request)
    with _instrument.activity(
        _instrument.PUBLISH,
        task=task.name,
        message_id=request.id,
        destination=lane or _destination(request),
        kind="deferral",
        deferrals=count,
        delay=delay,
        cause=cause,
    ):
        task.signature_from_request(countdown=countdown, headers=headers, queue=lane).apply_async()
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
        parked=False,
        reason=reason,
    )
    raise Ignore(f"deferred by taskguard for {delay:.3f}s: {reason}")


def park(
    task: Any,
    *,
    op: Op,
    group: tuple[str, float] | None,
    parking: Parking,
    state: DeferralState,
    policy: DeferralPolicy,
    reason: str,
    cause: str,
    on_give_up: Callable[[], None] | None = None,
) -> None:
    """Park the running task on the guard ``op`` of, until the guard has room; then end
    this run. Returns (without ending the run) only if it could not park: the caller
    defers by time instead. ``group`` is the task's fair-share group and weight, if its
    cap has one.

    Raises:
        Ignore: The task is parked (or, if the guard had room again, handed back).
        DeferralExhausted: As :func:`defer`.
    """
    # A spread keyed cap's run-time count, read here; unreadable, the lot counts with the
    # cap it was given (and parking itself meets the outage).
    with contextlib.suppress(BackendUnavailable, BackendError):
        op = parking.localized(op)
    how = parks(op)
    if how is None:
        return
    mode, limit, overrides = how
    request = task.request
    count, since = next_deferral(task, state, policy, reason, on_give_up)
    headers = {
        **carried_headers(request),
        HEADER_COUNT: count,
        HEADER_SINCE: since,
        HEADER_RESERVATION: None,
    }
    try:
        payload = pack(task, request, headers=headers, lane=lane_of(task.app, request), key=op.key)
        with _instrument.activity(
            _instrument.PUBLISH,
            task=task.name,
            message_id=request.id,
            destination="parked",
            kind="deferral",
            deferrals=count,
            delay=0.0,
            cause=cause,
        ):
            now = parking.park(
                op.key,
                mode=mode,
                limit=limit,
                ticket=request.id,
                seq=int(since * 1_000_000),
                payload=payload,
                group=group,
                overrides=overrides,
            )
    except (BackendUnavailable, BackendError) as exc:
        logger.warning("%s[%s]: could not park (%s); deferring by time", task.name, request.id, exc)
        return
    except Exception:  # the serializer refused the arguments, ...
        logger.exception("%s[%s]: could not park; deferring by time", task.name, request.id)
        return
    publish(task.app, now)
    logger.debug(
        "parked %s[%s] on %s (%s; deferral %d)", task.name, request.id, op.key, reason, count
    )
    signals.task_deferred.send(
        sender=task,
        task_id=request.id,
        delay=0.0,
        deferrals=count,
        reserved=False,
        parked=True,
        reason=reason,
    )
    raise Ignore(f"parked by taskguard until {op.key} has room: {reason}")


def next_deferral(
    task: Any,
    state: DeferralState,
    policy: DeferralPolicy,
    reason: str,
    on_give_up: Callable[[], None] | None,
) -> tuple[int, float]:
    """The next deferral's count and first-deferral time; applies the cap policy when the
    deferral would exceed it (raises, or ends the run)."""
    now = time.time()
    count = state.count + 1
    since = state.since if state.since is not None else now
    age = now - since
    if count > policy.max_deferrals or age > policy.max_age:
        if on_give_up is not None:
            on_give_up()
        _exhausted(task, count=state.count, age=age, policy=policy, reason=reason)
    return count, since


def carried_headers(request: Any) -> dict[str, Any]:
    """The running message's headers to carry into its next message: all of them, but a
    hand-back mark once it was claimed (the next message is no hand-back)."""
    headers = dict(request.headers or {})
    if getattr(request, "taskguard_claimed", False):
        headers.pop(HEADER_HANDBACK, None)
    return headers


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
        # A fresh start for whoever replays the dead letters: no counters, no reservation.
        headers = {k: v for k, v in (request.headers or {}).items() if k not in _OURS}
        with _instrument.activity(
            _instrument.PUBLISH,
            task=task.name,
            message_id=request.id,
            destination=policy.dead_letter_queue,
            kind="dead_letter",
            deferrals=count,
            delay=0.0,
            cause="exhausted",
        ):
            task.signature_from_request(
                queue=policy.dead_letter_queue, headers=headers
            ).apply_async()
        logger.error("%s; dead-lettered to queue %r", message, policy.dead_letter_queue)
        raise Ignore(f"dead-lettered to {policy.dead_letter_queue}")
    logger.error("%s; dropped (on_deferral_exhausted='drop')", message)
    raise Ignore("dropped by taskguard: deferral cap reached")


def _destination(request: Any) -> str | None:
    """The queue a re-published message goes to: the one it came from (default exchange:
    the routing key names the queue)."""
    info = request.delivery_info or {}
    return info.get("routing_key") or None
