"""``self.taskguard`` in a running GuardedTask: pass on what the downstream service said,
and end the run deferred.

After an HTTP 429, or from ``X-RateLimit-*`` headers, the task pauses a rate limit's
bucket for the whole fleet (:mod:`taskguard.guards.pause`) and may end its own run the
way a denied task ends: re-published with the same id by :func:`._deferral.defer`,
``request.retries`` untouched, one more deferral counted against the caps. It comes back
when the pause it set is over: on its own bucket, it reserves the first slot after the
pause (as a denied task reserves its slot) and runs then without contesting that bucket
again; the calls refused during the pause reserve the slots after it.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn

from celery.exceptions import Ignore

from taskguard._validate import name as check_name
from taskguard.backend.base import Backend
from taskguard.backend.ops import LeaseOp, PauseOp
from taskguard.errors import BackendError, BackendUnavailable, RateLimited
from taskguard.guards.keying import bucket_tag, key_text
from taskguard.guards.pause import (
    Pause,
    backend_now,
    observed_pause,
    pause_seconds,
    record_pause,
)
from taskguard.guards.ratelimit import RateLimit

from ._deferral import DeferralState, defer
from ._run_state import Run, is_claim
from ._runtime import runtime_for

__all__ = ["THIS_RUN", "DeferredRun", "RunGuards", "kept_for_deferral"]

logger = logging.getLogger("taskguard.task")


class _ThisRun(enum.Enum):
    KEY = "the bucket this run was admitted under"


#: ``key=`` left out: the bucket the running task uses for that limit (its key template
#: over the run's arguments), or the limiter's one bucket.
THIS_RUN = _ThisRun.KEY

# Set on the run's request by the helper (the task body's own request: Celery's
# Task.__call__ pushes a copy, so the tracer's request never sees them).
_RESUME_AT = "taskguard_resume_at"  # time.monotonic() when the run's pauses end
_PAUSED = "taskguard_paused"  # the _Paused that ends last


@dataclass(frozen=True)
class _Paused:
    """The longest pause a run set: for the reason of its deferral, and its slot."""

    name: str
    bucket: str | None
    seconds: float
    key: str  # the bucket's full key


class DeferredRun(Ignore):  # type: ignore[misc]
    """The run ended by :meth:`RunGuards.defer`, its message re-published: its release
    keeps the message's claims (:func:`kept_for_deferral`)."""


class RunGuards:
    """The running task's handle on taskguard: ``self.taskguard`` in a bound task.

    Args:
        task: The GuardedTask.
        request: Its current request (the run).

    Example:
        >>> @app.task(bind=True, base=GuardedTask, guards=[partner])  # doctest: +SKIP
        ... def push(self, order_id):
        ...     response = client.post(...)
        ...     if response.status_code == 429:
        ...         self.taskguard.pause("partner-api", seconds=30, defer=True)
    """

    def __init__(self, task: Any, request: Any) -> None:
        self.task = task
        self.request = request

    def __repr__(self) -> str:
        return f"<RunGuards of {self.task.name}[{self.request.id}]>"

    def pause(
        self,
        name: str,
        *,
        key: str | int | _ThisRun | None = THIS_RUN,
        seconds: float | timedelta | str,
        defer: bool = False,
        tag: str | int | None = None,
    ) -> Pause:
        """Refuse every call of rate limit ``name``'s bucket ``key`` for ``seconds``,
        fleet-wide (see :meth:`taskguard.RateLimiter.pause`).

        Args:
            name: A ``RateLimit``'s ``name`` (by default the task name of the task that
                carries it). A name no task uses is allowed: its bucket is paused all
                the same.
            key: The bucket; left out, the one this run uses for that limit.
            seconds: From 0 to 31 days: a number, a header's text, or a timedelta.
            defer: End this run deferred until the pause is over (never returns then).
            tag: With ``key``, for a limit placed by ``tag=`` on a Redis Cluster: what
                its template renders for that bucket (left out, ``key``'s own bucket
                is this run's, and so is its tag).

        Raises:
            Ignore: With ``defer``: the run ends, re-published (see :meth:`defer`).
            RateLimited: With ``defer``, in eager mode (no worker to defer to).
            ValueError: An argument is out of range; the message names it.
        """
        spec, tolerance = self._limit(name)
        bucket = self._bucket(spec, key)
        op = PauseOp(
            key=self.backend.keys.rate_limit(name, bucket, tag=self._tag(spec, key, tag)),
            seconds=pause_seconds(seconds),
            tolerance=tolerance,
        )
        on_outage = "allow" if spec is None else spec.on_outage
        paused = record_pause(self.backend, op, bucket=bucket, on_outage=on_outage)
        request = self.request
        resume_at = time.monotonic() + paused.retry_after
        if request.id is not None and resume_at > getattr(request, _RESUME_AT, 0.0):
            setattr(request, _RESUME_AT, resume_at)
            setattr(request, _PAUSED, _Paused(name, bucket, paused.retry_after, op.key))
        if defer:
            self.defer()
        return paused

    def observe(
        self,
        name: str,
        *,
        key: str | int | _ThisRun | None = THIS_RUN,
        remaining: int | str,
        reset_at: float | str | datetime | None = None,
        reset_after: float | str | timedelta | None = None,
        pace: bool = False,
        tag: str | int | None = None,
    ) -> Pause:
        """Follow the service's rate-limit headers for rate limit ``name``'s bucket
        ``key`` (see :meth:`taskguard.RateLimiter.observe`): with nothing remaining it
        pauses until the reset; with ``pace`` it spreads the calls remaining. ``tag``:
        as in :meth:`pause`.

        Raises:
            ValueError: An argument is out of range; the message names it.
        """
        seconds = observed_pause(
            remaining=remaining,
            reset_at=reset_at,
            reset_after=reset_after,
            pace=pace,
            now=backend_now(self.backend),
        )
        if not seconds:
            return Pause(self._bucket(self._limit(name)[0], key))
        return self.pause(name, key=key, seconds=seconds, tag=tag)

    def defer(self, countdown: float | timedelta | str | None = None) -> NoReturn:
        """End this run and re-publish the task to come back later, without spending a
        retry: the same id, ``request.retries`` untouched, one more deferral (its caps
        and exhaustion policy apply).

        Args:
            countdown: Seconds until it comes back. Left out: when the longest pause this
                run set is over (at once, if it set none). When that pause is on the
                run's own bucket, the run reserves its slot there, the first after the
                pause (within ``reserve_within``), and comes back on it without
                contesting that bucket again; otherwise it comes back after the pause,
                plus the deferral jitter, and contests its guards like any message.

        Raises:
            Ignore: Always in a worker, once re-published: the run ends.
            DeferralExhausted: The caps are reached and the policy is ``"fail"``.
            RateLimited: In eager mode, or called directly: there is no worker to defer to.
        """
        task, request = self.task, self.request
        if countdown is None:
            wait = max(getattr(request, _RESUME_AT, 0.0) - time.monotonic(), 0.0)
        else:
            wait = pause_seconds(countdown, "countdown")
        paused: _Paused | None = getattr(request, _PAUSED, None)
        if paused is None:
            reason = "deferred by the task itself"
        else:
            reason = (
                f"paused rate limit {paused.name!r} key {paused.bucket!r} for {paused.seconds:.3f}s"
            )
        if request.is_eager or request.called_directly:
            raise RateLimited(
                f"{task.name}: {reason}; cannot defer outside a worker, retry after {wait:.3f}s",
                guard=None if paused is None else repr(paused.name),
                key=None if paused is None else paused.bucket,
                retry_after=wait,
            )
        policy = task.taskguard_settings.deferral
        reserved: list[str] = []
        if countdown is None and paused is not None:
            slot = self._reserve(paused.key, min(policy.reserve_within, policy.max_delay))
            if slot is not None:
                wait, reserved = slot, [paused.key]

        republished = True

        def give_up() -> None:  # the caps are reached: the message will not come back
            nonlocal republished
            republished = False

        try:
            defer(
                task,
                retry_after=wait,
                reserved=reserved,
                state=DeferralState.from_headers(request.headers),
                policy=policy,
                reason=reason,
                cause="rate_limit",
                on_give_up=give_up,
            )
        except Ignore as exc:
            if republished:
                raise DeferredRun(*exc.args) from None
            raise

    def _reserve(self, key: str, within: float) -> float | None:
        """Reserve this run's next slot in bucket ``key`` (full key) if it is one of the
        run's own and the slot is at most ``within`` seconds away: the wait, else None."""
        request = self.request
        if within <= 0:  # reservations are off
            return None
        args, kwargs = request.args or (), request.kwargs or {}
        for guard in self.task.taskguard_settings.guards:
            if not isinstance(guard, RateLimit):
                continue
            for op in guard.task_ops(self.backend.keys, args, kwargs, request.id):
                if op.key != key:
                    continue
                try:
                    admission = self.backend.admit([op], reserve_within=within)
                except BackendUnavailable:
                    return None
                if admission.allowed or admission.reserved:
                    return admission.retry_after
                return None
        return None

    @property
    def backend(self) -> Backend:
        backend: Backend = self.task.taskguard_backend
        return backend

    def _limit(self, name: str) -> tuple[RateLimit | None, float]:
        """This task's rate limit called ``name`` (or None), and the widest tolerance of
        every rate limit of that name in the app: a pause must hold for all of them."""
        check_name(name, "name")
        own = _named(self.task.taskguard_settings.guards, name)
        specs = [] if own is None else [own]
        for task in runtime_for(self.task.app).guarded_tasks():
            if task is not self.task:
                other = _named(task.taskguard_settings.guards, name)
                specs += [] if other is None else [other]
        return own, max((spec.tolerance for spec in specs), default=0.0)

    def _bucket(self, spec: RateLimit | None, key: str | int | _ThisRun | None) -> str | None:
        if not isinstance(key, _ThisRun):
            return None if key is None else key_text(key)
        if spec is None or spec.key.source is None:
            return None
        request = self.request
        if request.id is None:
            raise ValueError(
                f"key is needed outside a task run: {spec!r} takes its bucket from the "
                "run's arguments"
            )
        return spec.bucket(request.args or (), request.kwargs or {})

    def _tag(
        self, spec: RateLimit | None, key: str | int | _ThisRun | None, tag: str | int | None
    ) -> str | None:
        """The bucket's hash-tag source (a ``tag`` option): this run's, or for a bucket
        given by key the ``tag`` given with it (needed on a spread schema)."""
        if not isinstance(key, _ThisRun):
            bucket = None if key is None else key_text(key)
            return bucket_tag(spec, self.backend.keys.spread, bucket, tag)
        if spec is None or spec.tag.source is None:
            return None
        request = self.request
        return spec.tag_for(request.args or (), request.kwargs or {})


def _named(guards: Any, name: str) -> RateLimit | None:
    return next((g for g in guards if isinstance(g, RateLimit) and g.name == name), None)


def kept_for_deferral(run: Run) -> Run:
    """``run`` without its publish-time claims, for a release after :meth:`RunGuards.defer`:
    the claims belong to the message, which comes back, so they are kept (for their time
    in the queue, as for ``self.retry()``) and not released."""
    claims = [op for op in run.held if is_claim(op)]
    if not claims:
        return run
    ttl = next(
        (
            float(getattr(g, "queue_ttl", 0.0))
            for g in run.guards
            if getattr(g, "at_publish", False)
        ),
        0.0,
    )
    kept: list[LeaseOp] = [dataclasses.replace(op, ttl=ttl or op.ttl) for op in claims]
    try:
        run.holder.renew(kept)
    except (BackendUnavailable, BackendError) as exc:
        logger.warning("claims of a deferred run kept until they expire: %s", exc)
    return dataclasses.replace(run, held=[op for op in run.held if not is_claim(op)])
