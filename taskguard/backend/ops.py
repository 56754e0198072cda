"""The atomic operations a backend runs, as plain values.

A guard turns itself into one op per call; the admission path hands the whole list to the
backend, which checks them all and commits all of them or none in one round trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

__all__ = ["Admission", "Op", "RateOp"]


@dataclass(frozen=True, slots=True)
class RateOp:
    """Take ``cost`` tokens from the GCRA bucket at ``key``.

    Attributes:
        key: Full Redis key (built by :class:`taskguard.keys.KeySchema`).
        interval: Seconds per token (the emission interval, period / limit).
        burst: Tokens an idle bucket can hand out at once (>= cost).
        cost: Tokens this call takes.
    """

    key: str
    interval: float
    burst: int
    cost: int = 1


#: Every op kind a backend understands (locks, slots and breakers join later).
Op: TypeAlias = RateOp


@dataclass(frozen=True, slots=True)
class Admission:
    """What the backend decided for a list of ops.

    Attributes:
        allowed: True when every op passed and was committed.
        retry_after: Seconds until all ops would pass (0 when allowed).
        denied: Index of the first op that refused, or ``None``.
        reserved: True when a denial reserved the future slot at ``retry_after``: the
            caller may run then without asking again (see docs/design.md, "Reservations").
        remaining: Tokens left in the tightest rate-limit bucket after this call, or -1
            when no rate-limit op was involved.
    """

    allowed: bool
    retry_after: float = 0.0
    denied: int | None = None
    reserved: bool = False
    remaining: int = -1


ALLOWED_EMPTY = Admission(allowed=True)
