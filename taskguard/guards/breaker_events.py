"""Breaker state changes: the transition codes of lib/breaker.lua, and :func:`announce`."""

from __future__ import annotations

import logging

from taskguard import signals

__all__ = ["OPENED_HALF", "TRANSITIONS", "announce"]

#: Release transition codes (lib/breaker.lua) -> (old state, new state, reason).
TRANSITIONS = {
    1: ("closed", "open", "failure or slow-call threshold reached"),
    2: ("half_open", "open", "a probe failed"),
    3: ("half_open", "closed", "probes succeeded"),
}
OPENED_HALF = ("open", "half_open", "open_for elapsed")


def announce(name: str, old: str, new: str, reason: str, task_id: str | None = None) -> None:
    """Send ``circuit_state_changed`` (and log; a breaker opening is a warning)."""
    level = logging.WARNING if new == "open" else logging.INFO
    logging.getLogger("taskguard.breaker").log(
        level, "circuit %r: %s -> %s (%s)", name, old, new, reason
    )
    signals.circuit_state_changed.send(
        sender=None, name=name, old=old, new=new, reason=reason, task_id=task_id
    )
