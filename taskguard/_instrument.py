"""The instrumentation hook: where taskguard's work can be watched (spans, metrics).

Code that does a piece of work worth watching opens an *activity* around it, one cheap
call, and notes what it learnt::

    with _instrument.activity(ADMIT, task=name, guards=guards) as act:
        outcome = admit(...)
        act.note(decision="allowed", retry_after=0.0)

With no hook installed (the default, and always in a slim install) :func:`activity`
returns one shared object whose methods do nothing (:data:`IDLE`). A hot path that would
rather not build the data at all tests :data:`on` first, and its notes ``act.on``::

    if not _instrument.on:
        return work(_instrument.IDLE)

Integrations install a :class:`Hook`:
:mod:`taskguard.integrations.sentry` opens a span in :meth:`Hook.start` and closes it in
:meth:`Hook.finish`; :mod:`taskguard.integrations.prometheus` counts and times in
:meth:`Hook.finish`. A hook's failure is logged and never reaches the work it watches.

Events that are not work (a denial, a lost lease, a breaker's transition, a dead letter)
are :mod:`taskguard.signals`; hooks and signals together are what integrations observe.

The activities and the data each carries (values are plain Python objects; a hook must
not keep them beyond :meth:`Hook.finish`):

========================  =============================================================
op                        data
========================  =============================================================
``taskguard.admit``       ``task`` (name), ``task_id``, ``guards`` (the Guard specs),
                          ``deferrals`` (of the message so far); noted: ``decision``
                          (``allowed``, ``degraded``, ``deferred``, ``skipped``,
                          ``duplicate``, ``failed``), ``guard`` (the deciding guard, on a
                          refusal), ``retry_after``, ``degraded``, ``waited`` (seconds
                          spent in a bounded wait for a lock or slot)
``taskguard.release``     ``task``, ``task_id``, ``guards``, ``outcome``; noted: ``lost``
                          (leases found lost at release)
``queue.publish``         a re-publish of the running message: ``task``,
                          ``message_id``, ``destination`` (queue), ``kind``
                          (``deferral``, or ``dead_letter`` at the deferral cap),
                          ``deferrals``, ``delay``, ``cause`` (the refusing guard's
                          kind, ``outage``, or ``exhausted``)
``cache.get``             a cache lookup in Redis: ``namespace``, ``keys``; noted:
                          ``hit`` (a copy or a queued write was found), ``size`` (bytes)
``cache.put``             a cached copy or write-behind write: ``namespace``, ``keys``,
                          ``size`` (bytes written)
``taskguard.drain.batch`` ``namespace``, ``partition``, ``records`` (stream entries),
                          ``rows`` (after coalescing)
========================  =============================================================
"""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Any

__all__ = [
    "ADMIT",
    "CACHE_GET",
    "CACHE_PUT",
    "DRAIN_BATCH",
    "IDLE",
    "PUBLISH",
    "RELEASE",
    "Activity",
    "Hook",
    "activity",
    "hooks",
    "install",
    "on",
    "uninstall",
]

logger = logging.getLogger("taskguard.instrument")

ADMIT = "taskguard.admit"
RELEASE = "taskguard.release"
PUBLISH = "queue.publish"
CACHE_GET = "cache.get"
CACHE_PUT = "cache.put"
DRAIN_BATCH = "taskguard.drain.batch"


class Hook:
    """What an integration implements; every method does nothing by default."""

    def start(self, activity: Activity) -> Any:
        """The work is about to start; the return value comes back to :meth:`finish`."""
        return None

    def finish(self, activity: Activity, state: Any, error: BaseException | None) -> None:
        """The work ended (``error``: the exception it raised, or None)."""


class Activity:
    """One piece of work being watched: its op, its data, and when it started.

    Attributes:
        op: What the work is (``taskguard.admit``, ``cache.get``...).
        data: What is known about it (see the module docstring for each op).
        started: ``time.perf_counter()`` when it started.
        duration: Seconds it took (set before :meth:`Hook.finish` is called).
    """

    __slots__ = ("_hooks", "_states", "data", "duration", "op", "started")

    #: True: hooks watch this activity (notes are worth computing).
    on = True

    def __init__(self, op: str, data: dict[str, Any], installed: tuple[Hook, ...]) -> None:
        self.op = op
        self.data = data
        self._hooks = installed
        self._states: list[Any] = []
        self.started = 0.0
        self.duration = 0.0

    def note(self, **data: Any) -> None:
        """Add what the work learnt."""
        self.data.update(data)

    def __enter__(self) -> Activity:
        self.started = time.perf_counter()
        for hook in self._hooks:
            try:
                self._states.append(hook.start(self))
            except Exception:
                logger.exception("taskguard: instrumentation hook %r failed", hook)
                self._states.append(None)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.duration = time.perf_counter() - self.started
        for hook, state in zip(reversed(self._hooks), reversed(self._states), strict=True):
            try:
                hook.finish(self, state, exc)
            except Exception:
                logger.exception("taskguard: instrumentation hook %r failed", hook)


class _Idle:
    """The activity when no hook is installed: nothing is recorded."""

    __slots__ = ()
    on = False
    data: dict[str, Any] = {}  # noqa: RUF012 - shared and never written

    def note(self, **data: Any) -> None:
        pass

    def __enter__(self) -> _Idle:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


#: The activity of work nobody watches.
IDLE = _Idle()
_hooks: tuple[Hook, ...] = ()
#: True while a hook is installed.
on = False


def activity(op: str, /, **data: Any) -> Activity | _Idle:
    """A context manager around one piece of work of kind ``op`` (see the module doc)."""
    if not _hooks:
        return IDLE
    return Activity(op, data, _hooks)


def hooks() -> tuple[Hook, ...]:
    """The installed hooks, in installation order."""
    return _hooks


def install(hook: Hook) -> Hook:
    """Install ``hook`` (installing it twice is a no-op); returns it."""
    global _hooks, on  # noqa: PLW0603 - the process-wide set of hooks, replaced whole
    if hook not in _hooks:
        _hooks = (*_hooks, hook)
    on = True
    return hook


def uninstall(hook: Hook) -> None:
    """Remove ``hook`` (absent: nothing happens)."""
    global _hooks, on  # noqa: PLW0603
    _hooks = tuple(h for h in _hooks if h is not hook)
    on = bool(_hooks)
