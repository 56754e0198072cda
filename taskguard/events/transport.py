"""Where events travel: Redis pub/sub, or, on any other backend, a hub in the process.

Redis goes through the backend's port (``publish``, ``pubsub``, and ``commands`` to map
errors); the memory backend's state lives in one process, so its events do too (a hub
per backend), which lets the unit tests and examples publish and subscribe without a
server.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import weakref
from collections import deque
from typing import Any, Protocol

import redis

from taskguard.backend.base import Backend
from taskguard.backend.redis import MESSAGE_TYPES, RedisBackend
from taskguard.errors import BackendUnavailable

__all__ = ["Listener", "listen", "send"]

logger = logging.getLogger("taskguard.events")

#: Seconds between attempts to subscribe again after the connection broke.
RESUBSCRIBE_EVERY = 0.5
#: Shortest wait for the server to confirm a subscription.
CONFIRM_TIMEOUT = 2.0


class Listener(Protocol):
    """A subscription to one channel."""

    def receive(self, timeout: float) -> str | None:
        """The next message, waiting at most ``timeout`` seconds (None: none came)."""

    def close(self) -> None:
        """End the subscription (idempotent)."""


def send(backend: Backend, channel: str, message: str) -> int:
    """Publish ``message`` on ``channel``; returns how many subscribers got it.

    Raises:
        BackendUnavailable: Redis could not be reached.
        BackendError: Redis refused (e.g. ``NOPERM`` on the channel).
    """
    if isinstance(backend, RedisBackend):
        return backend.publish(channel, message, what="event publish")
    return _hub(backend).publish(channel, message)


def listen(backend: Backend, channel: str) -> Listener:
    """Subscribe to ``channel``: messages published once this returns are received.

    Raises:
        BackendUnavailable: Redis could not be reached.
        BackendError: Redis refused (e.g. ``NOPERM`` on the channel).
    """
    if isinstance(backend, RedisBackend):
        return _RedisListener(backend, channel)
    return _hub(backend).listen(channel)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class _RedisListener:
    """A pub/sub connection that confirms its subscription, and makes a new one when the
    connection breaks (messages published in between are missed: pub/sub keeps none)."""

    def __init__(self, backend: RedisBackend, channel: str) -> None:
        self.backend = backend
        self.channel = channel
        self._pending: deque[str] = deque()
        self._pubsub: Any = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._retry_at = 0.0
        self._subscribe()

    def _subscribe(self) -> None:
        pubsub = self.backend.pubsub(self.channel)
        wait = max(self.backend.socket_timeout or 0.0, CONFIRM_TIMEOUT)
        try:
            with self.backend.commands("events subscribe"):
                self.backend.subscribe(pubsub, self.channel)
                # Replies come in order: the PONG follows the SUBSCRIBE's confirmation, so
                # once it is here the server delivers every later PUBLISH to us.
                pubsub.ping()
                deadline = time.monotonic() + wait
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise redis.exceptions.TimeoutError(f"SUBSCRIBE unconfirmed in {wait}s")
                    message = pubsub.get_message(timeout=left)
                    if message is None:
                        continue
                    if message["type"] == "pong":
                        break
                    if message["type"] in MESSAGE_TYPES:
                        self._pending.append(_text(message["data"]))
        except BaseException:
            pubsub.close()
            raise
        self._pubsub = pubsub

    def receive(self, timeout: float) -> str | None:
        with self._lock:
            if self._pending:
                return self._pending.popleft()
            if self._closed.is_set():
                return None
            if self._pubsub is None and not self._resubscribe():
                self._closed.wait(min(timeout, max(self._retry_at - time.monotonic(), 0.0)))
                return None
            try:
                with self.backend.commands("events listen"):
                    message = self._pubsub.get_message(timeout=timeout)
            except BackendUnavailable as exc:
                logger.warning(
                    "events: lost the subscription to %s (%s); subscribing again "
                    "(events published meanwhile are missed)",
                    self.channel,
                    exc,
                )
                self._drop()
                self._retry_at = time.monotonic() + RESUBSCRIBE_EVERY
                return None
        if message is None or message["type"] not in MESSAGE_TYPES:
            return None
        return _text(message["data"])

    def _resubscribe(self) -> bool:
        if time.monotonic() < self._retry_at:
            return False
        try:
            self._subscribe()
        except BackendUnavailable:
            self._retry_at = time.monotonic() + RESUBSCRIBE_EVERY
            return False
        logger.warning("events: subscribed to %s again", self.channel)
        return True

    def _drop(self) -> None:
        if self._pubsub is not None:
            # A broken connection may fail to close; it is gone anyway.
            with contextlib.suppress(Exception):
                self._pubsub.close()
            self._pubsub = None

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self._drop()


class _HubListener:
    def __init__(self, hub: _Hub, channel: str) -> None:
        self.hub = hub
        self.channel = channel
        self.messages: queue.SimpleQueue[str] = queue.SimpleQueue()

    def receive(self, timeout: float) -> str | None:
        try:
            return self.messages.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def close(self) -> None:
        self.hub.forget(self)


class _Hub:
    """The channels of one non-Redis backend, in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[str, list[_HubListener]] = {}

    def publish(self, channel: str, message: str) -> int:
        with self._lock:
            listeners = list(self._listeners.get(channel, ()))
        for listener in listeners:
            listener.messages.put(message)
        return len(listeners)

    def listen(self, channel: str) -> _HubListener:
        listener = _HubListener(self, channel)
        with self._lock:
            self._listeners.setdefault(channel, []).append(listener)
        return listener

    def forget(self, listener: _HubListener) -> None:
        with self._lock:
            listeners = self._listeners.get(listener.channel, [])
            if listener in listeners:
                listeners.remove(listener)


_HUBS: weakref.WeakKeyDictionary[Backend, _Hub] = weakref.WeakKeyDictionary()
_HUBS_LOCK = threading.Lock()


def _hub(backend: Backend) -> _Hub:
    with _HUBS_LOCK:
        hub = _HUBS.get(backend)
        if hub is None:
            hub = _HUBS[backend] = _Hub()
        return hub
