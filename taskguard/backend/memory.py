"""A process-local backend with the same contract as Redis, for tests and local use."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

from taskguard.clock import Clock, SystemClock
from taskguard.keys import KeySchema

from .base import Backend
from .breakers import effective_state
from .memory_breaker import BreakerStates
from .ops import ALLOWED_EMPTY, Admission, BreakerOp, Held, LeaseOp, Op, RateOp, SlotOp, granted

__all__ = ["MemoryBackend", "local_backend"]


class MemoryBackend(Backend):
    """Keeps guard state in dicts, guarded by one lock. Time comes from ``clock``.

    Args:
        keys: The key schema.
        clock: The clock (a :class:`taskguard.clock.FakeClock` in unit tests).
    """

    def __init__(self, *, keys: KeySchema | None = None, clock: Clock | None = None) -> None:
        super().__init__(keys=keys)
        self.clock: Clock = clock or SystemClock()
        self._data: dict[str, tuple[float, float]] = {}  # bucket -> (TAT, expires_at)
        self._leases: dict[str, tuple[str, float]] = {}  # key -> (owner, expires_at)
        self._fences: dict[str, int] = {}
        self._slots: dict[str, dict[str, float]] = {}  # key -> {owner: expires_at}
        self._breakers = BreakerStates()
        self._wakeups: dict[str, int] = {}
        self._lock = threading.Lock()
        self._woken = threading.Condition(self._lock)

    def __repr__(self) -> str:
        return f"MemoryBackend(prefix={self.keys.prefix!r})"

    def _get(self, key: str, now: float) -> float | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires_at = item
        if expires_at <= now:
            del self._data[key]
            return None
        return value

    def _lease(self, key: str, now: float) -> tuple[str, float] | None:
        item = self._leases.get(key)
        if item is not None and item[1] <= now:
            del self._leases[key]
            return None
        return item

    def admit(self, ops: Sequence[Op], *, reserve_within: float = 0.0) -> Admission:
        if not ops:
            return ALLOWED_EMPTY
        with self._lock:
            now = self.clock.time()
            probes: set[int] = set()
            waits = []
            for index, op in enumerate(ops):
                if isinstance(op, BreakerOp):
                    wait, probe = self._breakers.check(op, now)
                    if probe:
                        probes.add(index)
                else:
                    wait = self._wait(op, now)
                waits.append(wait)
            denied = next((i for i, wait in enumerate(waits) if wait > 1e-9), None)
            if denied is None:
                values = [
                    self._breakers.commit(op, now, i in probes)
                    if isinstance(op, BreakerOp)
                    else self._commit(op, now, now)
                    for i, op in enumerate(ops)
                ]
                return granted(ops, values)
            worst = max(waits)
            rates = [
                (op, wait) for op, wait in zip(ops, waits, strict=True) if isinstance(op, RateOp)
            ]
            # Same rule as admit.lua: reserve only when every denial is a rate limit and
            # the buckets' waits agree within half the smallest interval.
            reservable = all(isinstance(ops[i], RateOp) for i, w in enumerate(waits) if w > 1e-9)
            if (
                reservable
                and 0 < worst <= reserve_within
                and worst - min(w for _, w in rates) <= min(op.interval for op, _ in rates) / 2
            ):
                for op, _ in rates:
                    self._commit(op, now + worst, now)
                return Admission(False, worst, denied=denied, reserved=True, remaining=0)
            return Admission(False, worst, denied=denied, remaining=0)

    def _holders(self, key: str, now: float) -> dict[str, float]:
        holders = self._slots.setdefault(key, {})
        for owner in [o for o, expires in holders.items() if expires <= now]:
            del holders[owner]
        return holders

    def _wait(self, op: RateOp | LeaseOp | SlotOp, now: float) -> float:
        if isinstance(op, RateOp):
            tat = max(self._get(op.key, now) or 0.0, now)
            return max(tat + (op.cost - op.burst) * op.interval - now, 0.0)
        if isinstance(op, SlotOp):
            holders = self._holders(op.key, now)
            if op.owner in holders or len(holders) < op.limit:
                return 0.0
            return max(min(holders.values()) - now, 0.001)
        held = self._lease(op.key, now)
        if held is not None and held[0] != op.owner:
            return max(held[1] - now, 0.001)
        return 0.0

    def _commit(self, op: RateOp | LeaseOp | SlotOp, at: float, now: float) -> int:
        if isinstance(op, RateOp):
            start = max(self._get(op.key, now) or 0.0, now, at)
            new_tat = start + op.cost * op.interval
            self._data[op.key] = (new_tat, new_tat + 0.001)
            # (at - start) is exactly 0 for an idle bucket; the epsilon absorbs float noise.
            return max(math.floor((at - start) / op.interval + op.burst - op.cost + 1e-6), 0)
        if isinstance(op, SlotOp):
            self._holders(op.key, now)[op.owner] = now + op.ttl
            return 0
        if op.drop:
            self._leases.pop(op.key, None)
            return 0
        self._leases[op.key] = (op.owner, now + op.ttl)
        if op.fence_key is None:
            return 0
        token = max(self._fences.get(op.fence_key, 0) + 1, int(now * 1_000_000))
        self._fences[op.fence_key] = token
        return token

    def release(self, ops: Sequence[Held]) -> list[int]:
        with self._lock:
            results = [self._give_back(op, self.clock.time()) for op in ops]
            self._woken.notify_all()
            return results

    def _give_back(self, op: Held, now: float) -> int:
        if isinstance(op, BreakerOp):
            return self._breakers.release(op, now)
        if isinstance(op, SlotOp):
            ours = self._holders(op.key, now).pop(op.owner, None) is not None
            wake = op.limit
        else:
            held = self._lease(op.key, now)
            ours = held is not None and held[0] == op.owner
            if ours:
                del self._leases[op.key]
            wake = 1
        if ours and op.wakeup_key is not None:
            self._wakeups[op.wakeup_key] = min(self._wakeups.get(op.wakeup_key, 0) + 1, wake)
        return ours

    def renew(self, ops: Sequence[Held]) -> list[bool]:
        with self._lock:
            now = self.clock.time()
            results = []
            for op in ops:
                if isinstance(op, BreakerOp):
                    ours = self._breakers.renew(op, now)
                elif isinstance(op, SlotOp):
                    holders = self._holders(op.key, now)
                    ours = op.owner in holders
                    if ours:
                        holders[op.owner] = now + op.ttl
                else:
                    held = self._lease(op.key, now)
                    ours = held is not None and held[0] == op.owner
                    if ours:
                        self._leases[op.key] = (op.owner, now + op.ttl)
                results.append(ours)
            return results

    def breaker_state(self, op: BreakerOp) -> str:
        with self._lock:
            s = self._breakers.get(op.key)
            return effective_state(s.state, s.until * 1000, s.forced, self.clock.time() * 1000)

    def set_breaker(self, op: BreakerOp, action: str) -> None:
        with self._lock:
            self._breakers.apply(op.key, action)

    def owner(self, key: str) -> str | None:
        with self._lock:
            held = self._lease(key, self.clock.time())
            return held[0] if held else None

    def wait_for_wakeup(self, key: str, timeout: float) -> bool:
        with self._lock:
            woken = self._woken.wait_for(lambda: self._wakeups.get(key, 0) > 0, timeout)
            if woken:
                self._wakeups[key] -= 1
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
