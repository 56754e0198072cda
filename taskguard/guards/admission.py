"""Composing guards: one backend call to admit them all, with the outage policy applied."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from taskguard.backend.base import Backend
from taskguard.backend.memory import MemoryBackend, local_backend
from taskguard.backend.ops import ALLOWED_EMPTY, Admission, Op
from taskguard.errors import BackendError, BackendUnavailable

from .base import Guard

__all__ = ["Outcome", "admit", "decide_offline", "log_outage"]

logger = logging.getLogger("taskguard.admission")

#: Retry delay for a ``deny`` guard when the backend gives no hint.
OUTAGE_RETRY_AFTER = 1.0
_LOG_EVERY = 10.0
_last_logged: dict[bool, float] = {}


class Outcome(NamedTuple):
    """An admission and how it was reached (a named tuple: built on every admission).

    Attributes:
        admission: The backend's decision (or the policy's, when degraded).
        degraded: True when the backend was unreachable and outage policies decided.
        local: When degraded, the indexes of the ops the process-local backend admitted
            (``local`` policy): those, and only those, are held there until released.
    """

    admission: Admission
    degraded: bool = False
    local: tuple[int, ...] = ()


def log_outage(exc: BackendUnavailable) -> None:
    """Log that the outage policies decide (at most every few seconds per kind)."""
    # Logged at most every few seconds per process and kind: an outage must be visible,
    # but not one line per task.
    now = time.monotonic()
    refused = exc.refuses_writes
    if now - _last_logged.get(refused, float("-inf")) < _LOG_EVERY:
        return
    _last_logged[refused] = now
    if refused:
        # Redis answers but will not write (OOM, MISCONF): its operator must act, and
        # until then no guard can record state, so the outage policies decide.
        logger.error(
            "taskguard: Redis refuses writes (%s): guard state cannot be recorded, "
            "applying outage policies: %s",
            exc.code,
            exc,
        )
    else:
        logger.warning("taskguard backend unavailable, applying outage policies: %s", exc)


def admit(
    backend: Backend,
    guards: Sequence[Guard],
    ops: Sequence[Op],
    *,
    reserve_within: float = 0.0,
    wake: tuple[str, float] | None = None,
) -> Outcome:
    """Admit ``ops`` (one per guard, same order) in one round trip.

    With ``wake`` (a wake-up list and a timeout), wait on it first, as
    :meth:`~taskguard.backend.base.Backend.admit_after_wakeup` does: on Redis the wait and
    the admission go in one write.

    When the backend is unreachable each guard's ``on_outage`` decides: any ``deny``
    refuses; ``local`` guards are enforced by the process-local backend; ``allow``
    guards pass.

    Raises:
        BackendError: Redis refused for a reason that is not an outage (a permission,
            authentication or script error); it names ``guards``. No policy applies:
            an ``allow`` guard must not stop enforcing silently.
    """
    try:
        if wake is None:
            return Outcome(backend.admit(ops, reserve_within=reserve_within))
        key, timeout = wake
        return Outcome(backend.admit_after_wakeup(key, timeout, ops, reserve_within=reserve_within))
    except BackendUnavailable as exc:
        log_outage(exc)
        return decide_offline(lambda: local_backend(backend), guards, ops, exc)
    except BackendError as exc:
        # The redis-py error stays the cause; this one only adds the guards' names.
        raise exc.naming(tuple(repr(guard) for guard in guards)) from exc.__cause__


def decide_offline(
    offline_backend: Callable[[], MemoryBackend],
    guards: Sequence[Guard],
    ops: Sequence[Op],
    exc: BackendUnavailable,
) -> Outcome:
    """What the guards' outage policies decide for ``ops`` while the backend is down.

    Any ``deny`` refuses; ``local`` guards are admitted by ``offline_backend()``, the
    process-local backend (built only when needed); ``allow`` guards pass.
    """
    for index, guard in enumerate(guards):
        if guard.on_outage == "deny":
            retry_after = exc.retry_after or OUTAGE_RETRY_AFTER
            return Outcome(Admission(False, retry_after=retry_after, denied=index), True)
    local = tuple(i for i, guard in enumerate(guards) if guard.on_outage == "local")
    if not local:
        return Outcome(ALLOWED_EMPTY, degraded=True)
    # No reservations offline: a local slot must not mark the shared buckets as paid.
    result = offline_backend().admit([ops[i] for i in local])
    if result.denied is not None:
        denied = Admission(False, retry_after=result.retry_after, denied=local[result.denied])
        return Outcome(denied, degraded=True)
    tokens = [0] * len(ops)
    for index, token in zip(local, result.tokens or [0] * len(local), strict=True):
        tokens[index] = token
    admitted = Admission(True, remaining=result.remaining, tokens=tuple(tokens))
    return Outcome(admitted, degraded=True, local=local)
