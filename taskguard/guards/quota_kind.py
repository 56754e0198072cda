"""The quota op and its kind in the op-kind registry: encoding for lib/quota.lua, memory
semantics, the undo of an admission across Cluster slots (a refund of this call's cost in
its window) and run-time allowances applied client-side (:mod:`taskguard.guards.quota`
holds the spec; the Lua side is ``backend/scripts/lib/quota.lua``).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from taskguard.backend.builtin_kinds import override
from taskguard.backend.registry import MemoryState, OpKind, register

__all__ = ["QUOTA_GRACE_MS", "QuotaOp"]

#: A window's counter outlives the window by this much (a late reader still sees it).
QUOTA_GRACE_MS = 60_000


@dataclass(frozen=True, slots=True)
class QuotaOp:
    """Take ``cost`` calls from the quota at ``key`` in the window holding the server time.

    Attributes:
        key: The quota's state (a hash: window start, calls used).
        limit: Calls per window.
        cost: Calls this one takes (0: only read what is left).
        starts: Consecutive window starts, epoch milliseconds, ascending (>= 2).
        period: ``"day"``, ``"week"`` or ``"month"``: an allowance set at run time
            applies only if it is for this period.
        overrides: When set, the hash of allowances set at run time for this quota
            (``taskguard limit set --kind quota``): an entry for ``field``, else for
            ``"*"``, replaces ``limit`` inside the admission script.
        field: This key's entry in ``overrides``: ``"k:<key>"``, or ``"*"``.
    """

    key: str
    limit: int
    cost: int
    starts: tuple[int, ...]
    period: str = ""
    overrides: str | None = None
    field: str = "*"


def _calls(state: MemoryState, op: QuotaOp) -> int:
    """``op``'s calls per window after an allowance set at run time, as quota.lua's parse."""
    spec = override(state, op.overrides, op.field)
    if spec is None:
        return op.limit
    calls, period = spec.split()
    return int(calls) if period == op.period else op.limit


def _window(starts: Sequence[int], now_ms: int) -> tuple[int, int]:
    """The ``(start, end)`` in ``starts`` holding ``now_ms`` (as quota.lua picks it)."""
    if now_ms < starts[0]:
        return starts[0], starts[1]
    for start, end in itertools.pairwise(starts):
        if start <= now_ms < end:
            return start, end
    last = starts[-1]
    return last, last + (last - starts[-2])


class _Memory:
    """The memory backend's quotas: key -> (window start, used, expires at)."""

    @staticmethod
    def _table(state: MemoryState) -> dict[str, tuple[int, int, float]]:
        table: dict[str, tuple[int, int, float]] = state.extra.setdefault("quota", {})
        return table

    def _used(self, state: MemoryState, op: QuotaOp, now: float) -> tuple[int, int, int]:
        start, end = _window(op.starts, int(now * 1000))
        item = self._table(state).get(op.key)
        used = item[1] if item is not None and item[0] == start and item[2] > now else 0
        return used, start, end

    def wait(self, state: MemoryState, op: QuotaOp, now: float) -> tuple[float, bool]:
        used, _, end = self._used(state, op, now)
        if op.cost and used + op.cost > _calls(state, op):
            return max(end / 1000 - now, 0.001), False
        return 0.0, False

    def commit(self, state: MemoryState, op: QuotaOp, at: float, now: float, flag: bool) -> int:
        used, start, end = self._used(state, op, now)
        if op.cost:
            used += op.cost
            self._table(state)[op.key] = (start, used, (end + QUOTA_GRACE_MS) / 1000)
        return _calls(state, op) - used

    def release(self, state: MemoryState, op: QuotaOp, now: float) -> int:
        # Only an admission's undo releases a quota op (calls are spent otherwise): give
        # back this call's cost if its window is still the current one, as quota.lua.
        used, start, _ = self._used(state, op, now)
        item = self._table(state).get(op.key)
        if not op.cost or item is None or item[0] != start:
            return 0
        self._table(state)[op.key] = (start, max(used - op.cost, 0), item[2])
        return 1

    def renew(self, state: MemoryState, op: QuotaOp, now: float) -> bool:
        return True


def _localize(op: QuotaOp, spec: str | None) -> QuotaOp:
    # quota.lua's parse of "<calls> <period>", done by the client (spread_limits.py).
    parts = spec.split() if spec is not None else []
    limit = int(parts[0]) if len(parts) == 2 and parts[1] == op.period else op.limit
    return dataclasses.replace(op, limit=limit, overrides=None)


def _encode(op: QuotaOp, release: bool) -> tuple[list[str], list[Any]]:
    args: list[Any] = [op.limit, op.cost, len(op.starts), *op.starts]
    if op.overrides is None:
        return [op.key], args
    return [op.key, op.overrides], [*args, op.field, op.period]


register(
    OpKind(QuotaOp, "quota", "quota", _encode, _Memory(), undo=lambda op: op, localize=_localize)
)
