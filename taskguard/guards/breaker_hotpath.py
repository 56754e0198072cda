"""Hot-path mode of the standalone breaker: closed-state calls make no round trip.

``backend.circuit_breaker(name, hot_path=True)`` builds a :class:`HotPathBreaker`. While
the breaker is closed, :meth:`HotPathBreaker.call` decides from a view of the state kept in
the process, runs the function, and adds its outcome to counters in the process. One
background thread per process and backend (the *agent*) does the I/O:

* every ``flush_interval`` it sends each breaker's counters in one ``breaker_flush.lua``
  call, which folds them into the shared window, evaluates the thresholds with Redis
  ``TIME`` and, on a trip, ``PUBLISH``-es the new state; the reply carries the current
  state, so the view is refreshed on every flush (a missed message costs at most one
  interval);
* between flushes it listens on the prefix's breaker channel
  (``<prefix>:breaker-events``, built here from ``backend.keys.prefix``), so a trip made
  by any process reaches every process's view at once.

Open: calls are refused from the view, with no I/O, until the open time is up. Half-open
(and whenever the view is stale, e.g. while Redis is unreachable): calls take the exact
path of :class:`~taskguard.guards.breaker.Breaker`, so probes stay leased and limited
fleet-wide, and the outage policy applies as usual.

The price: a trip lags the failures that cause it by up to one flush interval (plus the
publish), and a count window is folded per flush (see docs/breakers.md, "Hot-path mode").
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from taskguard.backend.redis import RedisBackend
from taskguard.errors import BackendError, BackendUnavailable, ConfigurationError

from .breaker import Breaker
from .breaker_agent import agent_for, local_breakers
from .breaker_events import announce
from .breaker_spec import CircuitBreaker

if TYPE_CHECKING:
    from taskguard.backend.base import Backend

__all__ = ["HotPathBreaker", "hot_path_breaker", "local_hot_path_breakers", "publish_refresh"]

logger = logging.getLogger("taskguard.breaker")

T = TypeVar("T")

#: A view not refreshed for this many flush intervals (at least a second) is stale: the
#: next call refreshes it itself, or takes the exact path if Redis cannot be reached.
STALE_INTERVALS = 10


def hot_path_breaker(backend: Backend, spec: CircuitBreaker, flush_interval: float) -> Breaker:
    """A :class:`HotPathBreaker` on a Redis backend; on any other backend, whose state is
    in this process anyway, the exact :class:`Breaker` (it makes no round trip)."""
    if (
        isinstance(flush_interval, bool)
        or not isinstance(flush_interval, (int, float))
        or not 0.001 <= flush_interval <= 1.0
    ):
        raise ConfigurationError(
            f"must be between 0.001 and 1 second, got {flush_interval!r}", field="flush_interval"
        )
    if not isinstance(backend, RedisBackend):
        return Breaker(backend, spec)
    return HotPathBreaker(backend, spec, flush_interval=float(flush_interval))


def publish_refresh(backend: RedisBackend, name: str) -> bool:
    """Tell every process's hot-path view of breaker ``name`` to refresh from Redis, after
    a change made outside a flush (a transition, an admin action). Logged, not raised,
    when Redis cannot be reached (the flush replies catch up within an interval anyway):
    returns whether it was published."""
    # The new state's open time is not known here: the subscribers read it themselves.
    try:
        backend.publish(backend.breaker_channel(), f"{name}|refresh|0", what="breaker publish")
    except BackendUnavailable as exc:
        logger.warning("circuit %r: state change not published: %s", name, exc)
        return False
    return True


class _Batch:
    """Outcomes counted since the last flush."""

    __slots__ = ("all_failed", "calls", "codes", "failures", "slows", "tail")

    def __init__(self, window: int) -> None:
        self.calls = self.failures = self.slows = self.tail = 0
        self.all_failed = True
        self.codes: deque[str] = deque(maxlen=window)

    def add(self, code: str) -> None:
        self.calls += 1
        self.codes.append(code)
        if code in "fF":
            self.failures += 1
            self.tail += 1
        else:
            self.tail = 0
            self.all_failed = False
        if code in "SF":
            self.slows += 1

    def merge_after(self, later: _Batch) -> _Batch:
        """This batch followed by ``later`` (a flush that failed is put back in front)."""
        for code in later.codes:
            self.codes.append(code)
        self.calls += later.calls
        self.failures += later.failures
        self.slows += later.slows
        self.tail = later.tail if not later.all_failed else self.tail + later.tail
        self.all_failed = self.all_failed and later.all_failed
        return self

    def args(self) -> list[Any]:
        return [
            self.calls,
            self.failures,
            self.slows,
            self.tail,
            int(self.all_failed),
            "".join(self.codes),
        ]


class HotPathBreaker(Breaker):
    """A fleet-wide breaker whose closed-state calls make no round trip.

    Built by ``backend.circuit_breaker(name, hot_path=True, flush_interval=0.05)``. Only
    :meth:`call` (and the decorator) take the hot path; :meth:`try_acquire`, :attr:`state`
    and the admin controls are those of :class:`Breaker`, exact, one round trip each.

    Args:
        backend: A Redis backend.
        spec: The breaker's settings.
        flush_interval: Seconds between two flushes of this process's outcomes.
    """

    def __init__(
        self, backend: RedisBackend, spec: CircuitBreaker, *, flush_interval: float = 0.05
    ) -> None:
        super().__init__(backend, spec)
        self.redis_backend = backend
        self.flush_interval = flush_interval
        self.stale_after = max(1.0, STALE_INTERVALS * flush_interval)
        self._start()

    def _start(self) -> None:
        # New locks in a forked child too: the parent's may have been held at the fork.
        self._lock = threading.Lock()  # the batch being counted
        self._flushing = threading.Lock()  # one flush at a time, in order
        self._pid = os.getpid()
        self._batch = _Batch(self.spec.window)
        # (state, monotonic deadline of an open state, monotonic time it was checked)
        self._view: tuple[str, float, float] = ("closed", 0.0, -math.inf)
        self._last_call = time.monotonic()
        self.next_flush = 0.0
        self.flushed_total = 0
        agent_for(self.redis_backend).add(self)

    def __repr__(self) -> str:
        return f"<HotPathBreaker {self.spec.name!r} on {self.backend!r}>"

    @property
    def local_state(self) -> str:
        """The state this process decides from: ``closed``, ``open``, ``half_open``,
        ``forced_open``, ``disabled`` (no I/O; ``half_open`` once an open time is up)."""
        state, deadline, _ = self._view
        if state == "open" and time.monotonic() >= deadline:
            return "half_open"
        return state

    @property
    def view_age(self) -> float:
        """Seconds since the view was last refreshed from Redis (inf: never)."""
        return time.monotonic() - self._view[2]

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``func`` through the breaker; no I/O while closed (see the module doc).

        Raises:
            CircuitOpen: The breaker is open (or half-open with every probe taken).
        """
        if self._pid != os.getpid():
            self._start()  # a forked child: the parent's counts and thread are not ours
        started = time.monotonic()
        self._last_call = started
        state, deadline, checked = self._view
        if started - checked > self.stale_after:
            try:
                self.flush()
            except BackendUnavailable:
                return super().call(func, *args, **kwargs)  # the outage policy decides
            state, deadline, checked = self._view
        if state == "closed":
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                code = self.spec.outcome(exc, time.monotonic() - started)
                if code != "i":
                    with self._lock:
                        self._batch.add(code)
                raise
            code = self.spec.outcome(None, time.monotonic() - started)
            with self._lock:
                self._batch.add(code)
            return result
        if state == "disabled":
            return func(*args, **kwargs)
        if state == "forced_open":
            raise self.spec.denied_error(self.spec.open_for)
        if state == "open" and started < deadline:
            raise self.spec.denied_error(deadline - started)
        return super().call(func, *args, **kwargs)  # half-open: exact, leased probes

    def flush(self) -> None:
        """Send this process's counted outcomes now, and refresh the view from the reply.

        A flush in flight on another thread (the agent's) is waited for first: it holds
        the counts it took, so this one then sends what was counted since, and its reply's
        total covers both.

        Raises:
            BackendUnavailable: Redis could not be reached; the counts are kept for the
                next flush.
            BackendError: Redis refused (a permission or script error); the counts are
                kept too.
        """
        with self._flushing:
            tripped = self._flush()
        if tripped:  # outside the lock: a signal receiver may flush again
            announce(self.spec.name, "closed", "open", "failure or slow-call threshold reached")

    def _flush(self) -> bool:
        """One flush; whether it tripped the breaker."""
        with self._lock:
            batch, self._batch = self._batch, _Batch(self.spec.window)
        op = self.spec.call_op(self.backend.keys, "-")
        keys = [op.key, op.window_key, op.probes_key]
        channel = self.redis_backend.breaker_channel()
        args = [
            *batch.args(),
            channel,
            self.spec.name,
            self.redis_backend.publish_command(),
            1,
            "cb",
            3,
            14,
            "-",
            "flush",
            *op.params,
        ]
        try:
            reply = self.redis_backend.run_script(
                "breaker_flush", keys, args, what="breaker flush", libs=("ops", "breaker")
            )
        except (BackendUnavailable, BackendError):
            with self._lock:  # kept, in order, in front of what was counted meanwhile
                self._batch = batch.merge_after(self._batch)
            raise
        transition, state, left_ms, total = reply
        self.flushed_total = int(total)
        self.apply(_text(state), int(left_ms))
        return bool(transition == 1)

    def apply(self, state: str, left_ms: float) -> None:
        """Set the view: ``state``, open for ``left_ms`` more milliseconds."""
        now = time.monotonic()
        self._view = (state, now + left_ms / 1000, now)

    def transitioned(self, code: int, task_id: str | None = None) -> None:
        """Announce an exact-path transition, and tell every process's view about it."""
        super().transitioned(code, task_id)
        if code:
            self._publish()

    def _publish(self) -> None:
        publish_refresh(self.redis_backend, self.spec.name)

    def _admin(self, action: Callable[[], None]) -> None:
        action()
        self._view = ("closed", 0.0, -math.inf)  # stale: refreshed by the next call
        self._publish()

    def force_open(self) -> None:
        """Refuse every call, fleet-wide, until :meth:`force_close` or :meth:`reset`."""
        self._admin(super().force_open)

    def disable(self) -> None:
        """Let every call through and record nothing, until closed or reset."""
        self._admin(super().disable)

    def force_close(self) -> None:
        """Close it now, with an empty window."""
        self._admin(super().force_close)

    def reset(self) -> None:
        """Forget everything about it (closed, empty window, no growth)."""
        self._admin(super().reset)

    def due(self, now: float) -> bool:
        """Whether the agent should flush (or refresh) this breaker now."""
        if now < self.next_flush:
            return False
        self.next_flush = now + self.flush_interval
        # Refreshed while in use; an idle breaker costs nothing, and its next call,
        # finding the view stale, refreshes it first.
        return self._batch.calls > 0 or now - self._last_call < self.stale_after


def local_hot_path_breakers() -> list[HotPathBreaker]:
    """The hot-path breakers in use in this process (their agent's list), by name."""
    found = [b for b in local_breakers() if isinstance(b, HotPathBreaker)]
    return sorted(found, key=lambda breaker: breaker.spec.name)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
