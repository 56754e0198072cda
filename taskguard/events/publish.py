"""Publishing guard events: :func:`publish_event`, and :func:`install`, which turns
taskguard's own signals into events published by this process.

Publishing never raises into the code that made the event: a failure (Redis down, a
refused channel) is logged, at most once a minute with a count of the others, and the
event is lost (pub/sub keeps nothing for absent subscribers anyway). Only rare events
publish (a breaker transition, a lost lease, a dead letter, an exhausted deferral cap,
an operator's action): admission and release never do.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from taskguard import signals
from taskguard.backend.base import Backend
from taskguard.backend.redis import HasBackend

from ._throttle import Throttled
from .schema import EVENT_TYPES, Event
from .transport import send

__all__ = ["install", "installed", "publish_event", "uninstall"]

#: Seconds between two log lines about events that could not be published.
LOG_EVERY = 60.0
#: A dead_lettered event names at most this many keys; an error text is cut to
#: ERROR_CHARS characters. A message stays small whatever the batch.
MAX_KEYS = 100
ERROR_CHARS = 1000

_HOST = socket.gethostname()


_failures = Throttled(LOG_EVERY)


def _backend(target: Backend | HasBackend) -> Backend:
    return target if isinstance(target, Backend) else target.backend


def publish_event(target: Backend | HasBackend, event_type: str, /, **fields: Any) -> bool:
    """Publish one event on the channel of ``target``'s key prefix.

    Args:
        target: The backend, or a client built on one (``taskguard.connect(url)``).
        event_type: One of :data:`~taskguard.events.EVENT_TYPES`.
        **fields: The type's fields (see docs/observability.md); optional ones left out
            are published as ``null``.

    Returns:
        True when Redis took the message (whether anyone listened or not); False when it
        could not be published, which is logged (throttled), never raised.

    Raises:
        ValueError: An unknown type, a missing field or a field the type does not have.

    Example:
        >>> import taskguard
        >>> from taskguard.events import publish_event
        >>> publish_event(taskguard.connect("memory://"), "limit_changed", name="api",
        ...               action="set", rate="10/s", burst=5)
        True
    """
    kind = EVENT_TYPES.get(event_type)
    if kind is None:
        raise ValueError(f"unknown event type {event_type!r}; known: {', '.join(EVENT_TYPES)}")
    values = kind.check(fields)
    backend = _backend(target)
    prefix = backend.keys.prefix
    event = Event(event_type, round(time.time(), 6), prefix, _HOST, os.getpid(), values)
    try:
        send(backend, backend.keys.events(), event.to_json())
    except Exception as exc:  # never into the caller: the event is lost, and said so
        _failures.log("events: a %s event of %r was not published: %s", event_type, prefix, exc)
        return False
    return True


# ---------------------------------------------------------------- signals -> events


class _Installed:
    """Where this process publishes its signals as events (None: it does not)."""

    def __init__(self) -> None:
        self.target: Backend | None = None
        self.lock = threading.Lock()


_installed = _Installed()


def _emit(event_type: str, **fields: Any) -> None:
    backend = _installed.target
    if backend is None:
        return
    try:
        publish_event(backend, event_type, **fields)
    except Exception:  # a bug in a handler must not reach the task that sent the signal
        _failures.log("events: could not build a %s event", event_type, exc_info=True)


def _on_circuit(
    sender: Any = None,
    *,
    name: str = "",
    old: str = "",
    new: str = "",
    reason: str = "",
    task_id: str | None = None,
    **kwargs: Any,
) -> None:
    _emit("circuit_state_changed", name=name, old=old, new=new, reason=reason, task_id=task_id)


def _on_lease_lost(
    sender: Any = None, *, task_id: str | None = None, key: str = "", **kwargs: Any
) -> None:
    backend = _installed.target
    parts = backend.keys.guard_parts(key) if backend is not None and key else None
    kind, name = (parts[0], parts[1]) if parts else (None, None)
    task = getattr(sender, "name", None)
    _emit("lease_lost", key=key, kind=kind, name=name, task=task, task_id=task_id)


def _on_dead_lettered(
    sender: Any = None,
    *,
    namespace: str = "",
    keys: Any = (),
    error: Any = "",
    attempts: int = 0,
    **kwargs: Any,
) -> None:
    listed = [str(key) for key in list(keys)[:MAX_KEYS]]
    text = str(error)[:ERROR_CHARS]
    _emit("dead_lettered", namespace=namespace, keys=listed, error=text, attempts=attempts)


def _on_exhausted(
    sender: Any = None,
    *,
    task_id: str | None = None,
    deferrals: int = 0,
    age: float = 0.0,
    policy: str = "",
    **kwargs: Any,
) -> None:
    queue = None
    if policy == "dead_letter":
        try:  # the task's own settings may name another queue than the global one
            queue = sender.taskguard_settings.deferral.dead_letter_queue
        except Exception:
            queue = None
    _emit(
        "deferral_exhausted",
        task=getattr(sender, "name", None),
        task_id=task_id,
        deferrals=deferrals,
        age=round(float(age), 3),
        policy=policy,
        dead_letter_queue=queue,
    )


_HANDLERS: tuple[tuple[Any, Callable[..., None]], ...] = (
    (signals.circuit_state_changed, _on_circuit),
    (signals.lease_lost, _on_lease_lost),
    (signals.dead_lettered, _on_dead_lettered),
    (signals.deferral_exhausted, _on_exhausted),
)


def install(target: Backend | HasBackend) -> None:
    """Publish taskguard's signals as events on ``target``'s prefix, from this process.

    Connects handlers to ``circuit_state_changed``, ``lease_lost``, ``dead_lettered``
    and ``deferral_exhausted``; processes forked afterwards (a prefork pool) inherit
    them. A Celery worker does this itself (setting ``events``, on by default); call it
    in other processes whose breakers, leases or drain pools you want on the channel.
    Calling it again moves publishing to the new target.

    Args:
        target: The backend, or a client built on one.
    """
    with _installed.lock:
        _installed.target = _backend(target)
        for signal, handler in _HANDLERS:
            signal.connect(handler, weak=False, dispatch_uid=f"taskguard.events.{handler.__name__}")


def uninstall() -> None:
    """Stop publishing signals as events from this process (idempotent)."""
    with _installed.lock:
        _installed.target = None
        for signal, handler in _HANDLERS:
            signal.disconnect(handler, dispatch_uid=f"taskguard.events.{handler.__name__}")


def installed() -> Backend | None:
    """The backend events are published to from this process's signals, or None."""
    return _installed.target
