"""The cached copy's format: a short header, then the codec's bytes.

A cached copy is ``=<delta_ms>:<payload>`` for a value and ``-<delta_ms>:`` for a negative
entry (the loader or the store found nothing). ``delta_ms`` is how long the load took, in
milliseconds: probabilistic early refresh (:mod:`taskguard.cache.xfetch`) refreshes slow
loads sooner. Values written by ``set()`` carry a delta of 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .codec import Codec

__all__ = ["Cached", "decode", "encode", "header"]

_VALUE = b"="
_NEGATIVE = b"-"


@dataclass(frozen=True)
class Cached:
    """A decoded cached copy.

    Attributes:
        value: The value (``None`` for a negative entry).
        negative: True when the copy records that there is no value.
        delta: Seconds the load that produced it took (0 for ``set()``).
    """

    value: Any
    negative: bool
    delta: float


def header(delta: float = 0.0, *, negative: bool = False) -> bytes:
    """The header in front of a payload: ``=<delta_ms>:`` (or ``-`` for a negative entry)."""
    return (_NEGATIVE if negative else _VALUE) + b"%d:" % max(int(delta * 1000), 0)


def encode(codec: Codec, value: Any, delta: float = 0.0) -> bytes:
    """The cached copy of ``value`` (``None`` makes a negative entry)."""
    if value is None:
        return header(delta, negative=True)
    return header(delta) + codec.dumps(value)


def decode(codec: Codec, data: bytes) -> Cached:
    """Read a cached copy written by :func:`encode` (or the write-behind script)."""
    end = data.index(b":")
    delta = int(data[1:end]) / 1000
    if data[:1] == _NEGATIVE:
        return Cached(None, True, delta)
    return Cached(codec.loads(data[end + 1 :]), False, delta)
