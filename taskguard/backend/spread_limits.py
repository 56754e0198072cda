"""Limits set at run time, for ops whose slot is not their hash's (a spread key schema).

A limit set at run time (``taskguard limit set``) is one hash per guard name, under the
prefix's own hash tag (:mod:`taskguard.backend.limits`). On one server the admission
script reads it with the bucket it admits. On a spread schema (Redis Cluster) a keyed
guard's keys carry their key's tag, so no script can read both: the Redis backends then
read the hash themselves, at most once per :data:`REREAD` seconds per hash and process
(``HGETALL``; a hash holds only what was set), and send the op with the values it names
already applied and without the hash (:attr:`OpKind.localize`). A change reaches the
whole fleet within :data:`REREAD` seconds (the one-server admission reads at most
``OVERRIDE_RECHECK`` late too); the backend that makes it forgets what it read at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from redis.crc import key_slot

from .registry import kind_of

__all__ = ["REREAD", "RemoteLimits"]

#: Seconds a process keeps what it read of one hash of limits set at run time.
REREAD = 0.5
_MAX_HASHES = 4096

OpT = TypeVar("OpT")


def _slot(key: str) -> int:
    return int(key_slot(key.encode("utf-8", "surrogatepass")))


#: (hash, op key) -> whether they lie in different slots: asked on every admission, and
#: an unkeyed guard's pair is always the same.
_APART: dict[tuple[str, str], bool] = {}


def _remote(op: object) -> str | None:
    """``op``'s hash of limits set at run time when it lies in another slot than ``op``
    and its kind can apply it client-side; else None."""
    overrides: str | None = getattr(op, "overrides", None)
    if overrides is None:
        return None
    pair = (overrides, getattr(op, "key", ""))
    apart = _APART.get(pair)
    if apart is None:
        if len(_APART) >= _MAX_HASHES:
            _APART.clear()
        apart = _APART[pair] = kind_of(op).localize is not None and _slot(pair[0]) != _slot(pair[1])
    return overrides if apart else None


class RemoteLimits:
    """What a process read of the hashes of limits set at run time, and when.

    Args:
        read: Reads one whole hash (``HGETALL``), field -> value as text.
    """

    def __init__(self, read: Callable[[str], dict[str, str]]) -> None:
        self._read = read
        self._hashes: dict[str, tuple[float, dict[str, str]]] = {}
        self._lock = threading.Lock()

    def forget(self) -> None:
        """Read every hash again on its next use (a limit was set or cleared here)."""
        with self._lock:
            self._hashes.clear()

    def _entries(self, name: str) -> dict[str, str]:
        found = self._hashes.get(name)
        if found is not None and found[0] > time.monotonic():
            return found[1]
        entries = self._read(name)
        self.store(name, entries)
        return entries

    def store(self, name: str, entries: dict[str, str]) -> None:
        """Keep what was just read of hash ``name`` for :data:`REREAD` seconds."""
        with self._lock:
            if len(self._hashes) >= _MAX_HASHES:
                self._hashes.clear()
            self._hashes[name] = (time.monotonic() + REREAD, entries)

    def stale(self, ops: Sequence[object]) -> list[str]:
        """The hashes :meth:`localize` would read for ``ops`` now (for a caller that
        reads them itself, such as the asyncio backend, then :meth:`store` s them)."""
        now = time.monotonic()
        found = []
        for op in ops:
            name = _remote(op)
            kept = None if name is None else self._hashes.get(name)
            if name is not None and (kept is None or kept[0] <= now):
                found.append(name)
        return found

    def localize(self, ops: Sequence[OpT]) -> Sequence[OpT]:
        """``ops`` with every op whose run-time hash lies in another slot replaced by one
        with the hash's values applied and no hash (the others as they are)."""
        out: list[OpT] | None = None
        for index, op in enumerate(ops):
            overrides = _remote(op)
            if overrides is None:
                continue
            localize = kind_of(op).localize
            if localize is None:  # _remote checked it; for the type checker
                continue
            entries = self._entries(overrides)
            field: str = getattr(op, "field", "*")
            spec = entries.get(field) or entries.get("*")
            if out is None:
                out = list(ops)
            out[index] = localize(op, spec)
        return ops if out is None else out


def text_hash(raw: dict[Any, Any]) -> dict[str, str]:
    """An ``HGETALL`` reply as text."""
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in raw.items()
    }
