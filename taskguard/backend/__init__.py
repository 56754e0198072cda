"""Backends: where guard state lives, the bottom layer. :func:`backend_from_url` picks one."""

from __future__ import annotations

import os
from typing import Any

from taskguard.keys import KeySchema
from taskguard.urls import redact

from .base import Backend
from .memory import MemoryBackend
from .ops import Admission, Op, RateOp
from .redis import RedisBackend
from .topology import REDIS_SCHEMES

__all__ = [
    "Admission",
    "Backend",
    "MemoryBackend",
    "Op",
    "RateOp",
    "RedisBackend",
    "backend_from_url",
    "resolve_target",
]

DEFAULT_URL = "redis://localhost:6379/0"
_SCHEMES = ", ".join(f"{scheme}://" for scheme in REDIS_SCHEMES)


def backend_from_url(
    url: str | None = None, *, prefix: str | None = None, **options: Any
) -> Backend:
    """Return the backend for ``url``.

    Args:
        url: ``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://`` or
            ``redis+sentinel://`` for Redis (see :mod:`.topology`); ``memory://`` for a
            process-local backend. Defaults to ``$TASKGUARD_REDIS_URL``, then
            ``redis://localhost:6379/0``.
        prefix: Key prefix for every key this backend writes. Defaults to
            ``$TASKGUARD_PREFIX``, then ``"tg"``.
        **options: Passed to :class:`RedisBackend` (``socket_timeout``, ``redis_options``...).

    Raises:
        ValueError: An unsupported URL scheme.
    """
    url, keys = resolve_target(url, prefix)
    if url.startswith("memory://"):
        return MemoryBackend(keys=keys, **options)
    if url.split("://", 1)[0].lower() in REDIS_SCHEMES:
        return RedisBackend(url, keys=keys, **options)
    raise ValueError(f"unsupported backend URL {redact(url)!r}: use {_SCHEMES} or memory://")


def resolve_target(url: str | None, prefix: str | None) -> tuple[str, KeySchema]:
    """The URL and key schema a client connects to: the arguments, else
    ``$TASKGUARD_REDIS_URL`` / ``$TASKGUARD_PREFIX``, else ``redis://localhost:6379/0`` and
    ``"tg"`` (the sync and the asyncio ``connect()`` both resolve them here)."""
    url = url or os.environ.get("TASKGUARD_REDIS_URL") or DEFAULT_URL
    return url, KeySchema(prefix=prefix or os.environ.get("TASKGUARD_PREFIX") or "tg")
