"""The hot-path breakers' agent: one thread per process and backend that does their I/O.

It flushes every :class:`~taskguard.guards.breaker_hotpath.HotPathBreaker` of its backend
on time, and applies the state changes published on the prefix's breaker channel to
their views (see :mod:`taskguard.guards.breaker_hotpath` for the whole mode).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Protocol

from taskguard.errors import BackendError, BackendUnavailable

from .breaker_spec import CircuitBreaker

if TYPE_CHECKING:
    from taskguard.backend.redis import RedisBackend

__all__ = ["FlushedBreaker", "agent_for", "local_breakers"]

logger = logging.getLogger("taskguard.breaker")

#: An agent with no breaker left for this long stops its thread.
ACTIVE_FOR = 30.0
#: Seconds between attempts to re-subscribe after the channel's connection broke.
RESUBSCRIBE_EVERY = 0.5
#: Seconds between two log lines for a breaker whose flush Redis refuses (a BackendError).
LOG_REFUSED_EVERY = 10.0


class FlushedBreaker(Protocol):
    """What the agent needs of a breaker (:class:`~.breaker_hotpath.HotPathBreaker`)."""

    spec: CircuitBreaker
    #: Monotonic time of the next flush; the agent sets it to 0 to refresh at once.
    next_flush: float

    def due(self, now: float) -> bool: ...

    def flush(self) -> None: ...

    def apply(self, state: str, left_ms: float) -> None: ...


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Agent:
    """One thread per process and backend: flushes every hot-path breaker, and applies the
    state changes published on the prefix's channel to their views."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.pid = os.getpid()
        self.channel = backend.keys.breaker_events()
        self._breakers: dict[str, weakref.WeakSet[FlushedBreaker]] = {}
        self._lock = threading.Lock()
        self._pubsub: Any = None
        self.retired = False
        self._logged: dict[str, float] = {}  # breaker name -> when its refusal was logged
        self._thread = threading.Thread(
            target=self._run, name=f"taskguard-breakers-{backend.keys.prefix}", daemon=True
        )
        self._thread.start()

    def add(self, breaker: FlushedBreaker) -> None:
        with self._lock:
            self._breakers.setdefault(breaker.spec.name, weakref.WeakSet()).add(breaker)

    def breakers(self) -> list[FlushedBreaker]:
        with self._lock:
            return [b for group in self._breakers.values() for b in list(group)]

    def _named(self, name: str) -> list[FlushedBreaker]:
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
        for breaker in self.breakers():  # changes may have been missed while unsubscribed
            breaker.next_flush = 0.0

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
            breakers = self.breakers()
            if breakers:
                idle_since = now
            for breaker in breakers:
                if breaker.due(now):
                    try:
                        breaker.flush()
                    except BackendUnavailable:
                        pass  # counts kept; the view goes stale and callers go exact
                    except BackendError as exc:  # counts kept; not an outage: say so
                        self._refused(breaker.spec.name, exc, now)
                    except Exception:  # never let one breaker stop the agent
                        logger.exception("circuit %r: flush failed", breaker.spec.name)
            wait = min((b.next_flush for b in breakers), default=now + 0.05)
            self._listen(max(wait - time.monotonic(), 0.0))

    def _refused(self, name: str, exc: BackendError, now: float) -> None:
        # Flushes come every flush_interval: one error line per breaker per 10 s.
        if now - self._logged.get(name, -LOG_REFUSED_EVERY) >= LOG_REFUSED_EVERY:
            self._logged[name] = now
            logger.error("circuit %r: flush failed: %s", name, exc)

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
                breaker.next_flush = 0.0
            else:
                breaker.apply(state, float(rest))


_AGENTS: weakref.WeakKeyDictionary[RedisBackend, _Agent] = weakref.WeakKeyDictionary()
_AGENTS_LOCK = threading.Lock()


def agent_for(backend: RedisBackend) -> _Agent:
    """This process's agent for ``backend`` (a forked child starts its own)."""
    with _AGENTS_LOCK:
        agent = _AGENTS.get(backend)
        if agent is None or agent.pid != os.getpid() or agent.retired:
            agent = _AGENTS[backend] = _Agent(backend)
        return agent


def local_breakers() -> list[FlushedBreaker]:
    """Every hot-path breaker this process's agents serve, whatever their backend."""
    pid = os.getpid()
    with _AGENTS_LOCK:
        agents = [agent for agent in _AGENTS.values() if agent.pid == pid and not agent.retired]
    return [breaker for agent in agents for breaker in agent.breakers()]
