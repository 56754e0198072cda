"""Rate limits set at run time: read by the admission script itself, so no worker restarts.

A limiter's overrides are one hash (:meth:`taskguard.keys.KeySchema.limit_overrides`):
``"*"`` applies to every bucket of the limiter, ``"k:<bucket>"`` to one bucket (a tenant,
a customer) and wins over ``"*"``. Each value is ``"<interval_us> <burst>"``. ``gcra.lua``
reads the bucket's entry in the same call that admits, so a change holds for the whole
fleet within a second: a process that found none for a bucket skips the read for up to
``OVERRIDE_RECHECK`` (1 s); the backend that sets or clears one forgets that at once (see
docs/rate-limits.md, "Changing a limit at run time").
"""

from __future__ import annotations

from dataclasses import dataclass

from taskguard.units import Rate

from .base import Backend
from .builtin_kinds import LIMITS
from .memory import MemoryBackend
from .redis import RedisBackend

__all__ = ["LimitOverride", "clear_limit", "limits_of", "set_limit"]


@dataclass(frozen=True)
class LimitOverride:
    """A rate set at run time for a limiter's buckets.

    Attributes:
        key: The bucket it applies to, or None for every bucket of the limiter.
        interval: Seconds per token.
        burst: Tokens an idle bucket hands out at once.
    """

    key: str | None
    interval: float
    burst: int

    @property
    def per_second(self) -> float:
        return 1 / self.interval


def _field(key: str | None) -> str:
    return "*" if key is None else f"k:{key}"


def set_limit(
    backend: Backend, name: str, rate: Rate, *, burst: int = 1, key: str | None = None
) -> None:
    """Set limiter ``name``'s rate (for bucket ``key``, or all of them) until cleared."""
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise ValueError(f"burst must be a positive integer, got {burst!r}")
    value = f"{rate.interval * 1_000_000!r} {burst}"
    hash_key = backend.keys.limit_overrides(name)
    if isinstance(backend, MemoryBackend):
        backend.state.extra.setdefault(LIMITS, {}).setdefault(hash_key, {})[_field(key)] = value
        return
    redis_backend = _redis(backend)
    with redis_backend.commands("limit set") as client:
        client.hset(hash_key, _field(key), value)
    redis_backend.forget_overrides()


def clear_limit(backend: Backend, name: str, *, key: str | None = None) -> bool:
    """Remove a rate set at run time; True if there was one. The code's rate applies again."""
    hash_key = backend.keys.limit_overrides(name)
    if isinstance(backend, MemoryBackend):
        entries = backend.state.extra.get(LIMITS, {}).get(hash_key, {})
        return entries.pop(_field(key), None) is not None
    redis_backend = _redis(backend)
    with redis_backend.commands("limit clear") as client:
        cleared = bool(client.hdel(hash_key, _field(key)))
    redis_backend.forget_overrides()
    return cleared


def limits_of(backend: Backend, name: str) -> list[LimitOverride]:
    """The rates set at run time for limiter ``name`` (the all-buckets one first)."""
    hash_key = backend.keys.limit_overrides(name)
    if isinstance(backend, MemoryBackend):
        raw = dict(backend.state.extra.get(LIMITS, {}).get(hash_key, {}))
    else:
        with _redis(backend).commands("limit show") as client:
            raw = {_text(field): _text(value) for field, value in client.hgetall(hash_key).items()}
    found = []
    for field, value in raw.items():
        interval_us, burst = value.split()
        key = None if field == "*" else field.removeprefix("k:")
        found.append(LimitOverride(key, float(interval_us) / 1_000_000, int(burst)))
    return sorted(found, key=lambda o: (o.key is not None, o.key or ""))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _redis(backend: Backend) -> RedisBackend:
    if not isinstance(backend, RedisBackend):
        raise TypeError(f"limits set at run time need Redis or memory, not {backend!r}")
    return backend
