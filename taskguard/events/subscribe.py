"""Receiving guard events: :func:`subscribe` returns an :class:`EventStream`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from types import TracebackType

from taskguard.backend import backend_from_url
from taskguard.backend.base import Backend
from taskguard.backend.redis import HasBackend

from ._throttle import Throttled
from .schema import EVENT_TYPES, Event
from .transport import Listener, listen

__all__ = ["EventStream", "subscribe"]

#: Longest single wait on the connection: how soon :meth:`EventStream.close` from
#: another thread ends an iteration.
SLICE = 0.2

_malformed = Throttled(60.0)


class EventStream:
    """The events of one key prefix, as they are published: iterate, or :meth:`get`.

    Built by :func:`subscribe` (or ``taskguard.connect(url).events()``); the subscription
    is made when it is built, so every event published afterwards is received. Pub/sub
    keeps nothing: events published while no stream listens are not received later.

    Iterating yields :class:`~taskguard.events.Event` objects until :meth:`close` is
    called (from the loop, or another thread), or ``timeout`` seconds pass without an
    event. Messages on the channel that are not events are skipped (and logged).

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        types: Iterable[str] | None = None,
        timeout: float | None = None,
        owns_backend: bool = False,
    ) -> None:
        self.backend = backend
        self.types = None if types is None else frozenset(types)
        self.timeout = timeout
        self._owns_backend = owns_backend
        self._closed = threading.Event()
        self._listener: Listener = listen(backend, backend.keys.events())

    def __repr__(self) -> str:
        return f"<EventStream {self.backend.keys.events()!r}>"

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed.is_set()

    def get(self, timeout: float | None = None) -> Event | None:
        """The next event (of the chosen types), waiting at most ``timeout`` seconds
        (None: until one comes or the stream is closed). None when none came."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed.is_set():
            left = SLICE if deadline is None else min(SLICE, deadline - time.monotonic())
            if left <= 0:
                return None
            message = self._listener.receive(left)
            if message is None:
                continue
            try:
                event = Event.from_json(message)
            except ValueError as exc:
                _malformed.log("events: skipped a message that is not an event: %s", exc)
                continue
            if self.types is None or event.type in self.types:
                return event
        return None

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self.get(self.timeout)
            if event is None:
                return
            yield event

    def close(self) -> None:
        """End the subscription; an iteration in progress ends (within 0.2 s)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._listener.close()
        if self._owns_backend:
            self.backend.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def subscribe(
    source: str | Backend | HasBackend | None = None,
    *,
    prefix: str | None = None,
    types: Iterable[str] | None = None,
    timeout: float | None = None,
) -> EventStream:
    """Subscribe to the guard events of a key prefix, fleet-wide.

    Args:
        source: A Redis URL (default ``$TASKGUARD_REDIS_URL``, then
            ``redis://localhost:6379/0``), a backend, or a client
            (``taskguard.connect(url)``).
        prefix: The key prefix, with a URL (default ``$TASKGUARD_PREFIX``, then ``tg``);
            a backend or client brings its own.
        types: Receive only these event types (default: every type).
        timeout: Iteration ends when no event came for this many seconds (default: it
            goes on until :meth:`EventStream.close`).

    Raises:
        ValueError: An unknown event type; a prefix given with a backend.
        BackendUnavailable: Redis could not be reached.
        BackendError: Redis refused the subscription (``NOPERM`` on the channel).

    Example:
        >>> import taskguard
        >>> from taskguard.events import publish_event, subscribe
        >>> client = taskguard.connect("memory://")
        >>> with subscribe(client, timeout=1) as stream:
        ...     _ = publish_event(client, "admin", action="breaker_open", name="geo")
        ...     [(event.type, event["name"]) for event in stream]
        [('admin', 'geo')]
    """
    if types is not None:
        types = list(types)
        unknown = sorted(set(types) - set(EVENT_TYPES))
        if unknown:
            raise ValueError(f"unknown event type {unknown[0]!r}; known: {', '.join(EVENT_TYPES)}")
    if source is None or isinstance(source, str):
        backend = backend_from_url(source, prefix=prefix)
        try:
            return EventStream(backend, types=types, timeout=timeout, owns_backend=True)
        except BaseException:
            backend.close()
            raise
    if prefix is not None:
        raise ValueError("prefix goes with a URL; a backend or client has its own")
    backend = source if isinstance(source, Backend) else source.backend
    return EventStream(backend, types=types, timeout=timeout)
