"""From raw Redis replies to :mod:`taskguard.status.model` values: pure functions.

Each takes what one key's reads returned (``None`` for a key gone meanwhile) and the
server time, and returns the value to show, or ``None`` when there is nothing held. The
state formats are those of the Lua libraries in ``backend/scripts/lib/``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from taskguard.backend.breakers import effective_state
from taskguard.guards.quota import QUOTA_GRACE_MS

from .model import BreakerStatus, LockHolder, QuotaUsage, RateBucket, SlotHolder, SlotSet

__all__ = [
    "breaker_status",
    "bucket",
    "lock_holder",
    "quota_usage",
    "seconds_left",
    "slot_set",
    "text",
]

#: A fencing token at least this large is a server time in microseconds (after 2001).
_TIMESTAMP_TOKEN = 10**15


def text(value: object) -> str:
    """A reply as text (Redis answers bytes)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _number(value: object, default: float = 0.0) -> float:
    try:
        return float(text(value)) if value is not None else default
    except ValueError:
        return default


def seconds_left(pttl: object) -> float | None:
    """``PTTL``'s reply in seconds; ``None`` for a key without expiry (or gone)."""
    if not isinstance(pttl, int) or pttl < 0:
        return None
    return pttl / 1000


def bucket(
    name: str,
    key: str | None,
    tat: object,
    now_us: int,
    limit: tuple[float, int] | None = None,
) -> RateBucket | None:
    """A GCRA bucket (lib/gcra.lua: the TAT in microseconds).

    Args:
        name: The limiter's name.
        key: The bucket.
        tat: The stored TAT.
        now_us: Server time, microseconds.
        limit: ``(seconds per token, burst)`` when known: the level is then computed as
            gcra.lua would admit a call now.
    """
    if tat is None:
        return None
    backlog_us = max(_number(tat) - now_us, 0.0)
    if limit is None:
        return RateBucket(name, key, backlog_us / 1_000_000)
    interval, burst = limit
    # gcra.lua admits k tokens now while TAT + (k - burst) * interval <= now.
    tokens = math.floor(burst - backlog_us / (interval * 1_000_000) + 1e-6)
    return RateBucket(name, key, backlog_us / 1_000_000, min(max(tokens, 0), burst), burst)


def lock_holder(
    kind: str,
    name: str,
    key: str | None,
    *,
    owner: object,
    pttl: object,
    fence: object = None,
    now_us: int = 0,
) -> LockHolder | None:
    """A held lease (lib/lease.lua: the key holds the owner; its fence key the last
    fencing token, ``max(last + 1, now_us)`` when taken)."""
    if owner is None:
        return None
    token = int(_number(fence)) if fence is not None else None
    age = None
    if token is not None and _TIMESTAMP_TOKEN <= token <= now_us:
        age = (now_us - token) / 1_000_000
    return LockHolder(kind, name, key, text(owner), seconds_left(pttl), token, age)


def slot_set(
    name: str, key: str | None, members: Sequence[tuple[Any, float]] | None, now_ms: int
) -> SlotSet | None:
    """A concurrency key's live holders (lib/slot.lua: owner scored by expiry in ms)."""
    holders = tuple(
        SlotHolder(text(owner), (score - now_ms) / 1000)
        for owner, score in members or ()
        if score > now_ms
    )
    return SlotSet(name, key, holders) if holders else None


def breaker_status(
    name: str,
    *,
    fields: Mapping[Any, Any] | None,
    window_type: object,
    window: Mapping[Any, Any] | None,
    probes: Sequence[tuple[Any, float]] | None,
    now_ms: int,
) -> BreakerStatus | None:
    """A breaker (lib/breaker.lua: the state hash, the window as a list (count) or a hash
    of ``<second>:<c|f|s>`` counters (time), the probes scored by lease expiry in ms)."""
    if not fields:
        return None
    state = {text(k): text(v) for k, v in fields.items()}
    effective = effective_state(state.get("state"), state.get("until"), state.get("forced"), now_ms)
    open_left = None
    if effective == "open":
        open_left = max(_number(state.get("until")) - now_ms, 0.0) / 1000
    kind = {"list": "count", "hash": "time"}.get(text(window_type), "")
    calls, failures, slow = (int(_number(state.get(f))) for f in ("wc", "wf", "ws"))
    if kind == "time":
        sums = {"c": 0, "f": 0, "s": 0}
        for field, count in (window or {}).items():
            _, _, what = text(field).partition(":")
            if what in sums:
                sums[what] += int(_number(count))
        calls, failures, slow = sums["c"], sums["f"], sums["s"]
    return BreakerStatus(
        name=name,
        state=effective,
        open_left=open_left,
        opens=int(_number(state.get("opens"))),
        window=kind,
        calls=calls,
        failures=failures,
        slow_calls=slow,
        consecutive_failures=int(_number(state.get("consec"))),
        probes=sum(1 for _, score in probes or () if score > now_ms),
        probe_successes=int(_number(state.get("ok"))),
    )


def quota_usage(
    name: str, key: str | None, *, start: object, used: object, pttl: object
) -> QuotaUsage | None:
    """A calendar quota (lib/quota.lua: ``{w: window start ms, c: calls used}``, expiring
    a grace period after the window ends)."""
    if start is None:
        return None
    left = seconds_left(pttl)
    resets_in = None if left is None else left - QUOTA_GRACE_MS / 1000
    over = resets_in is not None and resets_in <= 0
    return QuotaUsage(
        name=name,
        key=key,
        used=0 if over else int(_number(used)),
        window_start=_number(start) / 1000,
        resets_in=None if resets_in is None else max(resets_in, 0.0),
    )
