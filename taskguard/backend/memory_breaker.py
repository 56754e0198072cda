"""The circuit breaker of lib/breaker.lua, in Python, for the memory backend.

Kept line for line with the Lua so both backends pass one contract; read the Lua header
for the meaning of each field and transition code.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .breakers import FORCED
from .ops import BreakerOp

__all__ = ["BreakerStates"]

CLOSED_TO_OPEN, HALF_OPEN_TO_OPEN, HALF_OPEN_TO_CLOSED = 1, 2, 3
PROBE, PROBE_OPENED_HALF = 1, 2  # commit results


@dataclass
class _State:
    state: str = "closed"
    until: float = 0.0  # seconds
    opens: int = 0
    ok: int = 0
    consec: int = 0
    forced: str = ""
    calls: deque[str] = field(default_factory=deque)  # count window: outcome codes
    buckets: dict[int, list[int]] = field(default_factory=dict)  # time window: [c, f, s]
    probes: dict[str, float] = field(default_factory=dict)  # owner -> expiry


@dataclass
class _Params:
    wtype: str
    wsize: int
    min_calls: int
    failure_rate: float
    slow_rate: float
    consecutive: int
    open_for: float  # seconds
    growth: float
    max_open: float
    probes: int
    to_close: int

    @classmethod
    def of(cls, op: BreakerOp) -> _Params:
        p = op.params
        return cls(
            p[0],
            int(p[1]),
            int(p[2]),
            float(p[3]),
            float(p[4]),
            int(p[5]),
            p[6] / 1000,
            float(p[7]),
            p[8] / 1000,
            int(p[9]),
            int(p[10]),
        )


class BreakerStates:
    """Every breaker's state in one process."""

    def __init__(self) -> None:
        self._states: dict[str, _State] = {}

    def get(self, key: str) -> _State:
        return self._states.setdefault(key, _State())

    def apply(self, key: str, action: str) -> None:
        """force_open / disable / force_close / reset (see backend/breakers.py)."""
        if action == "reset":
            self._states.pop(key, None)
        elif action == "force_close":
            self._states[key] = _State()
        else:
            self.get(key).forced = FORCED[action]

    def effective(self, key: str, now: float) -> str:
        s = self.get(key)
        if s.state == "open" and now >= s.until:
            return "half_open_due"
        return s.state

    def check(self, op: BreakerOp, now: float) -> tuple[float, bool]:
        """Seconds to wait (0: admitted) and whether the call is a half-open probe."""
        s, p = self.get(op.key), _Params.of(op)
        state = self.effective(op.key, now)
        if s.forced == "disabled":
            return 0.0, False
        if s.forced == "open":
            return p.open_for, False
        if state == "closed":
            return 0.0, False
        if state == "open":
            return s.until - now, False
        s.probes = {o: t for o, t in s.probes.items() if t > now}
        if op.owner in s.probes:
            return 0.0, False
        if len(s.probes) < p.probes:
            return 0.0, True
        # Every probe permit is out: ask again soon, at most a second from now.
        return min(max(min(s.probes.values()) - now, 0.001), 1.0), False

    def commit(self, op: BreakerOp, now: float, probe: bool) -> int:
        if not probe:
            return 0
        s = self.get(op.key)
        result = PROBE
        if s.state != "half_open":
            s.state, s.ok, result = "half_open", 0, PROBE_OPENED_HALF
        s.probes[op.owner] = now + op.probe_ttl
        return result

    def _trip(self, s: _State, p: _Params, now: float, code: int) -> int:
        s.opens += 1
        s.state = "open"
        s.until = now + min(p.open_for * p.growth ** (s.opens - 1), p.max_open)
        s.ok = s.consec = 0
        s.calls.clear()
        s.buckets.clear()
        s.probes.clear()
        return code

    def release(self, op: BreakerOp, now: float) -> int:
        s, p = self.get(op.key), _Params.of(op)
        state = self.effective(op.key, now)
        code = op.mode
        s.probes = {o: t for o, t in s.probes.items() if t > now}  # expired: no probe
        probe = s.probes.pop(op.owner, None) is not None
        if s.forced or code == "i":
            return 0
        failed, slow = code in "fF", code in "SF"
        if probe and state in ("half_open", "half_open_due"):
            if failed or (slow and p.slow_rate <= 1):
                return self._trip(s, p, now, HALF_OPEN_TO_OPEN)
            s.ok += 1
            if s.ok >= p.to_close:
                s.state, s.opens, s.ok, s.consec = "closed", 0, 0, 0
                s.calls.clear()
                s.buckets.clear()
                s.probes.clear()
                return HALF_OPEN_TO_CLOSED
            return 0
        if state != "closed":
            return 0
        s.consec = s.consec + 1 if failed else 0
        calls, failures, slows = self._record(s, p, now, code)
        if p.consecutive > 0 and s.consec >= p.consecutive:
            return self._trip(s, p, now, CLOSED_TO_OPEN)
        if (
            calls >= p.min_calls
            and calls > 0
            and (failures / calls >= p.failure_rate or slows / calls >= p.slow_rate)
        ):
            return self._trip(s, p, now, CLOSED_TO_OPEN)
        return 0

    def _record(self, s: _State, p: _Params, now: float, code: str) -> tuple[int, int, int]:
        failed, slow = code in "fF", code in "SF"
        if p.wtype == "time":
            sec = int(now)
            bucket = s.buckets.setdefault(sec, [0, 0, 0])
            bucket[0] += 1
            bucket[1] += failed
            bucket[2] += slow
            for old in [b for b in s.buckets if b <= sec - p.wsize]:
                del s.buckets[old]
            c, f, sl = (sum(b[i] for b in s.buckets.values()) for i in range(3))
            return c, f, sl
        s.calls.append(code)
        if len(s.calls) > p.wsize:
            s.calls.popleft()
        return (
            len(s.calls),
            sum(c in "fF" for c in s.calls),
            sum(c in "SF" for c in s.calls),
        )

    def renew(self, op: BreakerOp, now: float) -> bool:
        s = self.get(op.key)
        if op.owner in s.probes:
            s.probes[op.owner] = now + op.probe_ttl
        return True
