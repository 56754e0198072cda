"""A process-local backend with the same contract as Redis, for tests and local use."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import cast

from taskguard.clock import Clock, SystemClock
from taskguard.keys import KeySchema

from .base import Backend
from .breakers import effective_state
from .builtin_kinds import breaker_states
from .ops import ALLOWED_EMPTY, Admission, BreakerOp, BucketOp, Held, Op, granted
from .registry import MemoryState, kind_of

__all__ = ["MemoryBackend", "local_backend"]


class MemoryBackend(Backend):
    """Keeps guard state in dicts, guarded by one lock. Time comes from ``clock``.

    Every op is checked, committed, released and renewed by its kind's memory semantics
    (see :mod:`taskguard.backend.registry`); this class only holds the lock and the
    all-or-nothing rule.

    Args:
        keys: The key schema.
        clock: The clock (a :class:`taskguard.clock.FakeClock` in unit tests).
    """

    def __init__(self, *, keys: KeySchema | None = None, clock: Clock | None = None) -> None:
        super().__init__(keys=keys)
        self.clock: Clock = clock or SystemClock()
        self.state = MemoryState()
        self._lock = threading.Lock()
        self._woken = threading.Condition(self._lock)

    def __repr__(self) -> str:
        return f"MemoryBackend(prefix={self.keys.prefix!r})"

    def admit(self, ops: Sequence[Op], *, reserve_within: float = 0.0) -> Admission:
        if not ops:
            return ALLOWED_EMPTY
        with self._lock:
            now = self.clock.time()
            state = self.state
            kinds = [kind_of(op) for op in ops]
            checks = [kind.memory.wait(state, op, now) for kind, op in zip(kinds, ops, strict=True)]
            waits = [wait for wait, _ in checks]
            denied = next((i for i, wait in enumerate(waits) if wait > 1e-9), None)
            if denied is None:
                values = [
                    kind.memory.commit(state, op, now, now, flag)
                    for kind, op, (_, flag) in zip(kinds, ops, checks, strict=True)
                ]
                return granted(ops, values)
            worst = max(waits)
            buckets = [
                (kind, op, wait)
                for kind, op, wait in zip(kinds, ops, waits, strict=True)
                if kind.bucket
            ]
            # Same rule as admit.lua: reserve only when every denial is a token bucket and
            # the buckets' waits agree within half the smallest interval.
            reservable = all(kinds[i].bucket for i, w in enumerate(waits) if w > 1e-9)
            if (
                reservable
                and 0 < worst <= reserve_within
                and worst - min(w for _, _, w in buckets)
                <= min(cast(BucketOp, op).interval for _, op, _ in buckets) / 2
            ):
                for kind, op, _ in buckets:
                    kind.memory.commit(state, op, now + worst, now, False)
                return Admission(False, worst, denied=denied, reserved=True, remaining=0)
            return Admission(False, worst, denied=denied, remaining=0)

    def release(self, ops: Sequence[Held]) -> list[int]:
        with self._lock:
            now = self.clock.time()
            results = [kind_of(op).memory.release(self.state, op, now) for op in ops]
            self._woken.notify_all()
            return results

    def renew(self, ops: Sequence[Held]) -> list[bool]:
        with self._lock:
            now = self.clock.time()
            return [kind_of(op).memory.renew(self.state, op, now) for op in ops]

    def breaker_state(self, op: BreakerOp) -> str:
        with self._lock:
            s = breaker_states(self.state).get(op.key)
            return effective_state(s.state, s.until * 1000, s.forced, self.clock.time() * 1000)

    def set_breaker(self, op: BreakerOp, action: str) -> None:
        with self._lock:
            breaker_states(self.state).apply(op.key, action)

    def owner(self, key: str) -> str | None:
        with self._lock:
            held = self.state.lease(key, self.clock.time())
            return held[0] if held else None

    def wait_for_wakeup(self, key: str, timeout: float) -> bool:
        wakeups = self.state.wakeups
        with self._lock:
            woken = self._woken.wait_for(lambda: wakeups.get(key, 0) > 0, timeout)
            if woken:
                wakeups[key] -= 1
            return woken

    def time(self) -> float:
        return self.clock.time()

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._woken = threading.Condition(self._lock)


def local_backend(backend: Backend) -> MemoryBackend:
    """The process-local backend the ``local`` outage policy enforces guards in.

    It shares ``backend``'s key schema and lives as long as ``backend``; a memory backend
    is its own local backend.
    """
    if isinstance(backend, MemoryBackend):
        return backend
    local: MemoryBackend | None = backend.__dict__.get("_taskguard_local")
    if local is None:
        local = backend.__dict__.setdefault("_taskguard_local", MemoryBackend(keys=backend.keys))
    return local
