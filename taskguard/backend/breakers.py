"""Breaker facts both backends share: admin actions and reading the effective state."""

from __future__ import annotations

__all__ = ["BREAKER_IDLE_MS", "CLOSED_FIELDS", "FORCED", "effective_state"]

#: A breaker's state expires after a day without calls (lib/breaker.lua's IDLE_MS).
BREAKER_IDLE_MS = 86_400_000

#: Admin action -> the ``forced`` field it sets.
FORCED = {"force_open": "open", "disable": "disabled"}

#: What ``force_close`` writes: closed, nothing forced, counters and growth reset.
CLOSED_FIELDS: dict[str, str | int] = {
    "state": "closed",
    "forced": "",
    "opens": 0,
    "ok": 0,
    "consec": 0,
    "wc": 0,
    "wf": 0,
    "ws": 0,
}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def effective_state(state: object, until: object, forced: object, now_ms: float) -> str:
    """closed / open / half_open / forced_open / disabled, as a caller would meet it."""
    forced_text = _text(forced)
    if forced_text == "open":
        return "forced_open"
    if forced_text == "disabled":
        return "disabled"
    current = _text(state) or "closed"
    if current == "open" and now_ms >= float(_text(until) or 0):
        return "half_open"
    return current
