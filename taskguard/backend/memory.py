"""A process-local backend with the same contract as Redis, for tests and local use."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

from taskguard.clock import Clock, SystemClock
from taskguard.keys import KeySchema

from .base import Backend
from .ops import ALLOWED_EMPTY, Admission, Op, RateOp

__all__ = ["MemoryBackend"]


class MemoryBackend(Backend):
    """Keeps guard state in a dict, guarded by one lock. Time comes from ``clock``.

    Args:
        keys: The key schema.
        clock: The clock (a :class:`taskguard.clock.FakeClock` in unit tests).
    """

    def __init__(self, *, keys: KeySchema | None = None, clock: Clock | None = None) -> None:
        super().__init__(keys=keys)
        self.clock: Clock = clock or SystemClock()
        self._data: dict[str, tuple[float, float]] = {}  # key -> (value, expires_at)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryBackend(prefix={self.keys.prefix!r})"

    @property
    def local(self) -> MemoryBackend:
        return self

    def _get(self, key: str, now: float) -> float | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires_at = item
        if expires_at <= now:
            del self._data[key]
            return None
        return value

    def admit(self, ops: Sequence[Op], *, reserve_within: float = 0.0) -> Admission:
        if not ops:
            return ALLOWED_EMPTY
        with self._lock:
            now = self.clock.time()
            tats: list[float] = []
            waits: list[float] = []
            denied = None
            for index, op in enumerate(ops):
                tat = max(self._get(op.key, now) or 0.0, now)
                tats.append(tat)
                wait = max(tat + (op.cost - op.burst) * op.interval - now, 0.0)
                waits.append(wait)
                if wait > 1e-9 and denied is None:
                    denied = index
            if denied is None:
                return Admission(allowed=True, remaining=self._commit(ops, tats, now, now))
            worst = max(waits)
            # Same rule as admit.lua: reserve only when the buckets' waits agree within
            # half the smallest interval, so no bucket is blocked beyond its own next slot.
            agree = worst - min(waits) <= min(op.interval for op in ops) / 2
            if reserve_within > 0 and worst <= reserve_within and agree:
                self._commit(ops, tats, now + worst, now)
                return Admission(
                    False, retry_after=worst, denied=denied, reserved=True, remaining=0
                )
            return Admission(False, retry_after=worst, denied=denied, remaining=0)

    def _commit(self, ops: Sequence[RateOp], tats: list[float], at: float, now: float) -> int:
        remaining = -1
        for op, tat in zip(ops, tats, strict=True):
            start = max(tat, at)
            new_tat = start + op.cost * op.interval
            self._data[op.key] = (new_tat, new_tat + 0.001)
            # (at - start) is exactly 0 for an idle bucket; the epsilon absorbs float noise.
            left = max(math.floor((at - start) / op.interval + op.burst - op.cost + 1e-6), 0)
            remaining = left if remaining < 0 else min(remaining, left)
        return remaining

    def time(self) -> float:
        return self.clock.time()

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
