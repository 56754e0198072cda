"""Limits set at run time: read by the admission script itself, so no worker restarts.

Three kinds, each one hash per guard name (:mod:`taskguard.keys`): a rate limiter's rates
(:meth:`~taskguard.keys.KeySchema.limit_overrides`), a concurrency cap's slot counts
(:meth:`~taskguard.keys.KeySchema.cap_overrides`) and a quota's allowances
(:meth:`~taskguard.keys.KeySchema.quota_overrides`). In each, ``"*"`` applies to every
key of the guard and ``"k:<key>"`` to one key (a tenant, a customer), winning over
``"*"``; either wins over the guard's own value and its ``per_key`` values. The values
are ``"<interval_us> <burst>"`` (rate), ``"<limit>"`` (cap) and ``"<calls> <period>"``
(quota). ``gcra.lua``, ``slot.lua`` (and the parking scripts' count of free slots) and
``quota.lua`` read the key's entry in the same call that admits, so a change holds for
the whole fleet from the next admission on (docs/rate-limits.md, docs/concurrency.md and
docs/quotas.md, "... at run time"). A rate is the exception: a process whose read found
none for a bucket skips the read for up to ``OVERRIDE_RECHECK`` (0.5 s), so a rate reaches
the whole fleet within a second; the backend that sets or clears one forgets that at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from taskguard.units import Rate

from .base import Backend
from .builtin_kinds import LIMITS
from .memory import MemoryBackend
from .redis import RedisBackend

__all__ = [
    "KINDS",
    "CapOverride",
    "LimitOverride",
    "QuotaOverride",
    "caps_of",
    "clear_cap",
    "clear_limit",
    "clear_quota",
    "limits_of",
    "quotas_of",
    "set_cap",
    "set_limit",
    "set_quota",
]

#: The kinds of limits that can be set at run time.
KINDS = ("rate", "cap", "quota")


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


@dataclass(frozen=True)
class CapOverride:
    """A slot count set at run time for a concurrency cap.

    Attributes:
        key: The cap key it applies to, or None for every key of the cap.
        limit: Slots.
    """

    key: str | None
    limit: int


@dataclass(frozen=True)
class QuotaOverride:
    """An allowance set at run time for a calendar quota.

    Attributes:
        key: The quota key it applies to, or None for every key of the quota.
        calls: Calls per window.
        period: ``"day"``, ``"week"`` or ``"month"``; it applies only to a quota of this
            period.
    """

    key: str | None
    calls: int
    period: str

    def __str__(self) -> str:
        return f"{self.calls}/{self.period}"


def _field(key: str | None) -> str:
    return "*" if key is None else f"k:{key}"


def _hash(backend: Backend, kind: str, name: str) -> str:
    keys = backend.keys
    if kind == "rate":
        return keys.limit_overrides(name)
    if kind == "cap":
        return keys.cap_overrides(name)
    if kind == "quota":
        return keys.quota_overrides(name)
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def _positive(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def _write(backend: Backend, kind: str, name: str, key: str | None, value: str) -> None:
    hash_key = _hash(backend, kind, name)
    if isinstance(backend, MemoryBackend):
        backend.state.extra.setdefault(LIMITS, {}).setdefault(hash_key, {})[_field(key)] = value
        return
    redis_backend = _redis(backend)
    with redis_backend.commands(f"limit set ({kind})") as client:
        client.hset(hash_key, _field(key), value)
    redis_backend.forget_overrides()


def _clear(backend: Backend, kind: str, name: str, key: str | None) -> bool:
    hash_key = _hash(backend, kind, name)
    if isinstance(backend, MemoryBackend):
        entries = backend.state.extra.get(LIMITS, {}).get(hash_key, {})
        return entries.pop(_field(key), None) is not None
    redis_backend = _redis(backend)
    with redis_backend.commands(f"limit clear ({kind})") as client:
        cleared = bool(client.hdel(hash_key, _field(key)))
    redis_backend.forget_overrides()
    return cleared


def _read(backend: Backend, kind: str, name: str) -> list[tuple[str | None, str]]:
    """``(key, value)`` of every entry, the all-keys one first, then by key."""
    hash_key = _hash(backend, kind, name)
    if isinstance(backend, MemoryBackend):
        raw = dict(backend.state.extra.get(LIMITS, {}).get(hash_key, {}))
    else:
        with _redis(backend).commands(f"limit show ({kind})") as client:
            raw = {_text(field): _text(value) for field, value in client.hgetall(hash_key).items()}
    found = [(None if f == "*" else f.removeprefix("k:"), v) for f, v in raw.items()]
    return sorted(found, key=lambda item: (item[0] is not None, item[0] or ""))


def set_limit(
    backend: Backend, name: str, rate: Rate, *, burst: int = 1, key: str | None = None
) -> None:
    """Set limiter ``name``'s rate (for bucket ``key``, or all of them) until cleared."""
    _positive(burst, "burst")
    _write(backend, "rate", name, key, f"{rate.interval * 1_000_000!r} {burst}")


def clear_limit(backend: Backend, name: str, *, key: str | None = None) -> bool:
    """Remove a rate set at run time; True if there was one. The code's rate applies again."""
    return _clear(backend, "rate", name, key)


def limits_of(backend: Backend, name: str) -> list[LimitOverride]:
    """The rates set at run time for limiter ``name`` (the all-buckets one first)."""
    found = []
    for key, value in _read(backend, "rate", name):
        interval_us, burst = value.split()
        found.append(LimitOverride(key, float(interval_us) / 1_000_000, int(burst)))
    return found


def set_cap(backend: Backend, name: str, limit: int, *, key: str | None = None) -> None:
    """Set cap ``name``'s slot count (for cap key ``key``, or all of them) until cleared."""
    _write(backend, "cap", name, key, str(_positive(limit, "limit")))


def clear_cap(backend: Backend, name: str, *, key: str | None = None) -> bool:
    """Remove a slot count set at run time; True if there was one."""
    return _clear(backend, "cap", name, key)


def caps_of(backend: Backend, name: str) -> list[CapOverride]:
    """The slot counts set at run time for cap ``name`` (the all-keys one first)."""
    return [CapOverride(key, int(value)) for key, value in _read(backend, "cap", name)]


def set_quota(
    backend: Backend, name: str, calls: int, period: str, *, key: str | None = None
) -> None:
    """Set quota ``name``'s allowance (for quota key ``key``, or all of them) until
    cleared. It applies to a quota of ``period`` only."""
    if period not in ("day", "week", "month"):
        raise ValueError(f"period must be 'day', 'week' or 'month', got {period!r}")
    _write(backend, "quota", name, key, f"{_positive(calls, 'calls')} {period}")


def clear_quota(backend: Backend, name: str, *, key: str | None = None) -> bool:
    """Remove an allowance set at run time; True if there was one."""
    return _clear(backend, "quota", name, key)


def quotas_of(backend: Backend, name: str) -> list[QuotaOverride]:
    """The allowances set at run time for quota ``name`` (the all-keys one first)."""
    found = []
    for key, value in _read(backend, "quota", name):
        calls, period = value.split()
        found.append(QuotaOverride(key, int(calls), period))
    return found


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _redis(backend: Backend) -> RedisBackend:
    if not isinstance(backend, RedisBackend):
        raise TypeError(f"limits set at run time need Redis or memory, not {backend!r}")
    return backend
