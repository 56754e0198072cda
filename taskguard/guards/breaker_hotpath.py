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

import contextlib
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from taskguard.errors import BackendUnavailable, ConfigurationError

from .breaker import Breaker
from .breaker_events import announce
from .breaker_spec import CircuitBreaker

if TYPE_CHECKING:
    from taskguard.backend.base import Backend
    from taskguard.backend.redis import RedisBackend

__all__ = ["HotPathBreaker", "hot_path_breaker"]

logger = logging.getLogger("taskguard.breaker")

T = TypeVar("T")

#: A view not refreshed for this many flush intervals (at least a second) is stale: the
#: next call refreshes it itself, or takes the exact path if Redis cannot be reached.
STALE_INTERVALS = 10
#: An agent with no breaker left for this long stops its thread.
ACTIVE_FOR = 30.0
#: Seconds between attempts to re-subscribe after the channel's connection broke.
RESUBSCRIBE_EVERY = 0.5


def hot_path_breaker(backend: Backend, spec: CircuitBreaker, flush_interval: float) -> Breaker:
    """A :class:`HotPathBreaker` on a Redis backend; on any other backend, whose state is
    in this process anyway, the exact :class:`Breaker` (it makes no round trip)."""
    from taskguard.backend.redis import RedisBackend

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
        self._lock = threading.Lock()
        self._start()

    def _start(self) -> None:
        self._pid = os.getpid()
        self._batch = _Batch(self.spec.window)
        # (state, monotonic deadline of an open state, monotonic time it was checked)
        self._view: tuple[str, float, float] = ("closed", 0.0, -math.inf)
        self._last_call = time.monotonic()
        self._next_flush = 0.0
        self.flushed_total = 0
        _agent_for(self.redis_backend).add(self)

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

        Raises:
            BackendUnavailable: Redis could not be reached; the counts are kept for the
                next flush.
        """
        with self._lock:
            batch, self._batch = self._batch, _Batch(self.spec.window)
        op = self.spec.call_op(self.backend.keys, "-")
        keys = [op.key, op.window_key, op.probes_key]
        channel = self.backend.keys.breaker_events()
        args = [
            *batch.args(),
            channel,
            self.spec.name,
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
        except BackendUnavailable:
            with self._lock:  # kept, in order, in front of what was counted meanwhile
                self._batch = batch.merge_after(self._batch)
            raise
        transition, state, left_ms, total = reply
        self.flushed_total = int(total)
        self.apply(_text(state), int(left_ms))
        if transition == 1:
            announce(self.spec.name, "closed", "open", "failure or slow-call threshold reached")

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
        # The subscribers refresh this breaker from Redis (the new state's open time is
        # not known here); the flush replies would catch up within an interval anyway.
        try:
            self.redis_backend.publish(
                self.backend.keys.breaker_events(),
                f"{self.spec.name}|refresh|0",
                what="breaker publish",
            )
        except BackendUnavailable as exc:
            logger.warning("circuit %r: state change not published: %s", self.spec.name, exc)

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
        if now < self._next_flush:
            return False
        self._next_flush = now + self.flush_interval
        # Refreshed while in use; an idle breaker costs nothing, and its next call,
        # finding the view stale, refreshes it first.
        return self._batch.calls > 0 or now - self._last_call < self.stale_after


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Agent:
    """One thread per process and backend: flushes every hot-path breaker, and applies the
    state changes published on the prefix's channel to their views."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.pid = os.getpid()
        self.channel = backend.keys.breaker_events()
        self._breakers: dict[str, weakref.WeakSet[HotPathBreaker]] = {}
        self._lock = threading.Lock()
        self._pubsub: Any = None
        self.retired = False
        self._thread = threading.Thread(
            target=self._run, name=f"taskguard-breakers-{backend.keys.prefix}", daemon=True
        )
        self._thread.start()

    def add(self, breaker: HotPathBreaker) -> None:
        with self._lock:
            self._breakers.setdefault(breaker.spec.name, weakref.WeakSet()).add(breaker)

    def _all(self) -> list[HotPathBreaker]:
        with self._lock:
            return [b for group in self._breakers.values() for b in list(group)]

    def _named(self, name: str) -> list[HotPathBreaker]:
        with self._lock:
            return list(self._breakers.get(name, ()))

    def _subscribe(self) -> None:
        pubsub = self.backend.pubsub()
        try:
            pubsub.subscribe(self.channel)
        except BaseException:
            pubsub.close()
            raise
        self._pubsub = pubsub
        for breaker in self._all():  # changes may have been missed while unsubscribed
            breaker._next_flush = 0.0

    def _drop_pubsub(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                self._pubsub.close()
        self._pubsub = None

    def _run(self) -> None:
        retry_at = 0.0
        idle_since = time.monotonic()
        while True:
            now = time.monotonic()
            if self._retire(now, idle_since):
                return
            if self._pubsub is None and now >= retry_at:
                try:
                    self._subscribe()
                except Exception:
                    retry_at = now + RESUBSCRIBE_EVERY
            breakers = self._all()
            if breakers:
                idle_since = now
            for breaker in breakers:
                if breaker.due(now):
                    try:
                        breaker.flush()
                    except BackendUnavailable:
                        pass  # counts kept; the view goes stale and callers go exact
                    except Exception:  # never let one breaker stop the agent
                        logger.exception("circuit %r: flush failed", breaker.spec.name)
            wait = min((b._next_flush for b in breakers), default=now + 0.05)
            self._listen(max(wait - time.monotonic(), 0.0))

    def _retire(self, now: float, idle_since: float) -> bool:
        """Stop once no breaker has used this agent for a while (a new one starts another)."""
        if now - idle_since < ACTIVE_FOR:
            return False
        with _AGENTS_LOCK, self._lock:
            if any(self._breakers.values()):
                return False
            self.retired = True
            if _AGENTS.get(self.backend) is self:
                del _AGENTS[self.backend]
        self._drop_pubsub()
        return True

    def _listen(self, timeout: float) -> None:
        if self._pubsub is None:
            time.sleep(min(timeout, RESUBSCRIBE_EVERY))
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self._pubsub.get_message(timeout=max(deadline - time.monotonic(), 0))
            except Exception:
                self._drop_pubsub()
                return
            if message is not None and message.get("type") == "message":
                self._apply(_text(message["data"]))
            if time.monotonic() >= deadline:
                return

    def _apply(self, data: str) -> None:
        name, _, rest = data.rpartition("|")  # "<name>|<state>|<ms left>"
        name, _, state = name.rpartition("|")
        for breaker in self._named(name):
            if state == "refresh":
                breaker._next_flush = 0.0
            else:
                breaker.apply(state, float(rest))


_AGENTS: weakref.WeakKeyDictionary[RedisBackend, _Agent] = weakref.WeakKeyDictionary()
_AGENTS_LOCK = threading.Lock()


def _agent_for(backend: RedisBackend) -> _Agent:
    """This process's agent for ``backend`` (a forked child starts its own)."""
    with _AGENTS_LOCK:
        agent = _AGENTS.get(backend)
        if agent is None or agent.pid != os.getpid() or agent.retired:
            agent = _AGENTS[backend] = _Agent(backend)
        return agent
