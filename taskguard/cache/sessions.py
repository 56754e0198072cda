"""Sessions: small records with sliding expiry, in Redis (optionally backed by a store).

A session lives ``ttl`` seconds after its last use: :meth:`Sessions.get` and
:meth:`Sessions.touch` push its expiry back (``GETEX``/``PEXPIRE``), :meth:`Sessions.set`
rewrites it. With a store, ``set()`` also writes the store first (write-through), so a
session survives the loss of Redis; the store copy records when it expires, counted from
the last ``set()``, and an expired store copy is never brought back.
"""

from __future__ import annotations

import contextlib
import secrets
import time as _time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, cast

from taskguard._validate import seconds
from taskguard.backend.base import Backend
from taskguard.backend.redis import HasBackend, require_redis
from taskguard.errors import BackendUnavailable
from taskguard.sinks.base import Record, Store

from .codec import get_codec
from .config import check_namespace
from .records import local_version

__all__ = ["Sessions"]

#: Sessions are few keys each; one partition's hash tag holds them all.
_PARTITION = 0


class Sessions:
    """A session store with sliding expiry.

    Build one with ``backend.sessions(ttl=..., namespace="sessions")``.

    Args:
        backend: A Redis backend.
        ttl: Seconds (or a timedelta) a session lives after its last use.
        namespace: Keeps these sessions apart from others ``[A-Za-z0-9_.-]+``.
        store: Optional durable copy (write-through); without it sessions live in Redis only.
        codec: ``"json"`` (default) or ``"msgpack"``.
        clock: Wall-clock seconds, for the store copy's expiry (injectable for tests).

    Example:
        >>> sessions = taskguard.connect().sessions(ttl=1800)  # doctest: +SKIP
        >>> sid = sessions.new({"user": 42})  # doctest: +SKIP
        >>> sessions.get(sid)  # doctest: +SKIP
        {'user': 42}
    """

    def __init__(
        self,
        backend: Backend | HasBackend,
        *,
        ttl: float | timedelta,
        namespace: str = "sessions",
        store: Store | None = None,
        codec: str = "json",
        clock: Callable[[], float] = _time.time,
    ) -> None:
        self.namespace = check_namespace(namespace)
        self.ttl = seconds(ttl, "ttl")
        self.store = store
        self.backend = require_redis(backend, "session store")
        self._codec = get_codec(codec)
        self._clock = clock

    def __repr__(self) -> str:
        return f"Sessions({self.namespace!r}, ttl={self.ttl!r})"

    @property
    def _ttl_ms(self) -> int:
        return max(int(self.ttl * 1000), 1)

    def _key(self, sid: str) -> str:
        if not isinstance(sid, str) or not sid:
            raise ValueError(f"a session id must be a non-empty string, got {sid!r}")
        return self.backend.keys.cache_value(self.namespace, _PARTITION, sid)

    def new(self, data: Any = None) -> str:
        """Start a session holding ``data`` (default ``{}``); returns its id, 256 random
        bits from :func:`secrets.token_urlsafe`."""
        sid = secrets.token_urlsafe(32)
        self.set(sid, {} if data is None else data)
        return sid

    def get(self, sid: str, default: Any = None) -> Any:
        """The data of session ``sid`` (``default`` if none), extending its life by ``ttl``.

        While Redis is down, a session with a store copy is read from the store;
        without a store this raises :class:`~taskguard.errors.BackendUnavailable`.
        """
        key = self._key(sid)
        try:
            with self.backend.commands("session get") as client:
                raw = cast("bytes | None", client.getex(key, px=self._ttl_ms))
        except BackendUnavailable:
            if self.store is None:
                raise
            return self._from_store(sid, key, default)
        if raw is not None:
            return self._codec.loads(raw)
        return self._from_store(sid, key, default)

    def set(self, sid: str, data: Any) -> None:
        """Store ``data`` as session ``sid``'s (store first, when there is one), for ``ttl``."""
        if data is None:
            raise ValueError("session data cannot be None: use destroy()")
        key = self._key(sid)
        if self.store is not None:
            expires = self._clock() + self.ttl
            record = Record(sid, {"data": data, "expires": expires}, local_version())
            self.store.write(self.namespace, [record])
        with self.backend.commands("session set") as client:
            client.set(key, self._codec.dumps(data), px=self._ttl_ms)

    def touch(self, sid: str) -> bool:
        """Extend session ``sid``'s life by ``ttl``; False if it no longer exists in Redis."""
        with self.backend.commands("session touch") as client:
            return bool(client.pexpire(self._key(sid), self._ttl_ms))

    def destroy(self, sid: str) -> None:
        """End session ``sid`` (a tombstone in the store too, when there is one)."""
        key = self._key(sid)
        if self.store is not None:
            self.store.write(self.namespace, [Record(sid, None, local_version(), deleted=True)])
        with self.backend.commands("session destroy") as client:
            client.delete(key)

    def _from_store(self, sid: str, key: str, default: Any) -> Any:
        if self.store is None:
            return default
        row = self.store.load(self.namespace, sid)
        if row is None or row.deleted or not isinstance(row.value, dict):
            return default
        left = float(row.value.get("expires", 0)) - self._clock()
        if left <= 0:
            return default
        data = row.value.get("data")
        # Best effort: a session read while Redis is down is served from the store alone.
        with (
            contextlib.suppress(BackendUnavailable),
            self.backend.commands("session restore") as client,
        ):
            client.set(key, self._codec.dumps(data), px=max(int(left * 1000), 1), nx=True)
        return data
