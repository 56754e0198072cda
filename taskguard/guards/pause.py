"""Feedback from the service a rate limit protects: pause a bucket, or follow its headers.

After an HTTP 429 (``Retry-After``), or from ``X-RateLimit-Remaining`` / ``-Reset``, the
caller tells the limiter, and the bucket is paused for every process: one Lua call (kind
``rlp`` in ``lib/gcra.lua``) pushes the bucket's TAT to
``max(TAT, now + seconds + (burst - 1) x interval)`` in server time. So no call passes
before the pause ends, a pause never shortens a longer backlog, and the calls refused
meanwhile reserve their slots from the end of the pause on, one interval apart: after a
pause the bucket resumes at its steady rate, not with a burst.

This module holds what :class:`~taskguard.guards.ratelimiter.RateLimiter` and a task's
``self.taskguard`` share: argument checks, the header arithmetic, and the call.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from taskguard.backend.base import Backend
from taskguard.backend.memory import local_backend
from taskguard.backend.ops import PauseOp
from taskguard.errors import BackendError, BackendUnavailable

__all__ = [
    "MAX_PAUSE",
    "Pause",
    "backend_now",
    "observed_pause",
    "pause_offline",
    "pause_seconds",
    "record_pause",
]

logger = logging.getLogger("taskguard.pause")

#: The longest pause, in seconds (31 days: a monthly quota's reset). Longer is taken for
#: a mistake, such as an epoch time or milliseconds given as seconds.
MAX_PAUSE = 31 * 86400.0
#: A ``reset_at`` further in the past than this is taken for seconds from now given as
#: an epoch time (clock skew accounts for a few seconds at most).
_PAST_SLACK = 86400.0


@dataclass(frozen=True)
class Pause:
    """What a pause, or an observation, did to one rate-limit bucket.

    It is truthy when the bucket refuses calls for a while.

    Attributes:
        key: The bucket (``None``: the limiter's one bucket).
        retry_after: Seconds from now until the bucket admits a call again: the pause
            asked for, or longer when the bucket's backlog already reached further; 0
            when nothing was paused (an observation with calls remaining, or a reset in
            the past).
        degraded: True when the backend was unreachable: the pause was not recorded for
            the fleet (under ``on_outage="local"`` it holds in this process).
    """

    key: str | None
    retry_after: float = 0.0
    degraded: bool = False

    def __bool__(self) -> bool:
        return self.retry_after > 0


def _number(value: object, field: str) -> float:
    """A finite number, or a header's text of one (``"30"``, ``"1.5"``)."""
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(f"{field} must be a number, got {value!r}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise ValueError(f"{field} must be a number, got {type(value).__name__}: {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"{field} must be finite, got {value!r}")
    return number


def pause_seconds(value: object, field: str = "seconds") -> float:
    """A pause's length: seconds (a number, a header's text, or a timedelta), from 0 to
    :data:`MAX_PAUSE`.

    Raises:
        ValueError: Naming ``field``.

    Example:
        >>> pause_seconds("30"), pause_seconds(timedelta(minutes=1))
        (30.0, 60.0)
    """
    seconds = value.total_seconds() if isinstance(value, timedelta) else _number(value, field)
    if not 0 <= seconds <= MAX_PAUSE:
        raise ValueError(
            f"{field} must be from 0 to {MAX_PAUSE:.0f} seconds (31 days), got {value!r}"
        )
    return seconds


def _remaining(value: object) -> int:
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"remaining must be an integer >= 0 (or its text), got {value!r}")
    return value


def _epoch(value: object, now: float) -> float:
    """``reset_at`` as epoch seconds: a number, a header's text, or an aware datetime."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("reset_at must be an aware datetime (with a tzinfo), or epoch seconds")
        return value.timestamp()
    epoch = _number(value, "reset_at")
    if epoch < now - _PAST_SLACK:
        raise ValueError(
            f"reset_at must be an epoch time (seconds since 1970), got {value!r}, which is "
            "long past: for seconds from now, pass reset_after"
        )
    return epoch


def observed_pause(
    *,
    remaining: object,
    reset_at: object = None,
    reset_after: object = None,
    pace: bool = False,
    now: float,
) -> float:
    """The pause that rate-limit headers call for, in seconds (0: none).

    With no calls remaining, the bucket pauses until the reset. With calls remaining it
    does not pause, unless ``pace``: then the next call waits ``(reset - now) /
    remaining``, so that when every response is observed, the calls left are spread
    evenly until the reset.

    Args:
        remaining: Calls left in the service's window (``X-RateLimit-Remaining``).
        reset_at: When the window resets, in epoch seconds or as an aware datetime
            (``X-RateLimit-Reset`` of most APIs), converted with ``now``.
        reset_after: The same, as seconds from now (``RateLimit-Reset`` of the IETF
            draft). Give one of the two when ``remaining`` is 0 or ``pace`` is set.
        pace: Spread the calls remaining until the reset.
        now: The caller's clock, in epoch seconds.

    Raises:
        ValueError: Naming the argument.

    Example:
        >>> observed_pause(remaining=0, reset_at=1030, now=1000.0)
        30.0
        >>> observed_pause(remaining=3, reset_after="30", pace=True, now=1000.0)
        10.0
        >>> observed_pause(remaining=3, reset_after=30, now=1000.0)
        0.0
    """
    left = _remaining(remaining)
    if not isinstance(pace, bool):
        raise ValueError(f"pace must be True or False, got {pace!r}")
    if reset_at is not None and reset_after is not None:
        raise ValueError("give reset_at or reset_after, not both")
    window: float | None = None
    if reset_at is not None:
        window = _epoch(reset_at, now) - now
        if window > MAX_PAUSE:
            raise ValueError(
                f"reset_at must be at most 31 days ahead, got {_value_text(reset_at)} "
                f"({window:.0f} s from now): milliseconds instead of seconds?"
            )
    elif reset_after is not None:
        window = pause_seconds(reset_after, "reset_after")
    if left and not pace:
        return 0.0
    if window is None:
        why = "remaining is 0" if not left else "pace is set"
        raise ValueError(f"reset_at or reset_after is needed when {why}")
    if window <= 0:
        return 0.0  # the window has reset already
    return window if not left else window / left


def _value_text(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else repr(value)


def backend_now(backend: Backend) -> float:
    """The clock a caller turns epoch times into seconds with: a memory backend's own
    (a fake clock in tests), else this host's, like deferral countdowns."""
    clock = getattr(backend, "clock", None)
    return float(clock.time()) if clock is not None else time.time()


def record_pause(backend: Backend, op: PauseOp, *, bucket: str | None, on_outage: str) -> Pause:
    """Run ``op`` in one backend call; what it did to the bucket.

    While the backend is unreachable the pause is not recorded for the fleet: it is
    logged, kept in this process under ``on_outage="local"``, and reported ``degraded``.

    Raises:
        BackendError: Redis refused for a reason that is not an outage.
    """
    try:
        admission = backend.admit([op])
    except BackendUnavailable as exc:
        return pause_offline(lambda: local_backend(backend), op, exc, bucket, on_outage)
    except BackendError as exc:
        raise exc.naming((f"pause of {op.key}",)) from exc.__cause__
    return Pause(bucket, admission.tokens[0] / 1_000_000)


def pause_offline(
    offline_backend: Callable[[], Backend],
    op: PauseOp,
    exc: BackendUnavailable,
    bucket: str | None,
    on_outage: str,
) -> Pause:
    """What a pause the backend could not record did (see :func:`record_pause`): logged,
    kept by ``offline_backend()`` under ``on_outage="local"``, reported ``degraded``."""
    logger.warning("taskguard: could not pause %s for %.3f s: %s", op.key, op.seconds, exc)
    if on_outage == "local":
        offline_backend().admit([op])
    return Pause(bucket, op.seconds, degraded=True)
