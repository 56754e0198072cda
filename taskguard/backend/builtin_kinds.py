"""The built-in op kinds (rate limit and its pause, lease, slot, breaker), registered on
import.

Each memory semantics mirrors its Lua library line for line (``scripts/lib/<lib>.lua``),
so both backends pass one contract suite.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .memory_breaker import BreakerStates
from .ops import BreakerOp, LeaseOp, PauseOp, RateOp, SlotOp
from .registry import MemoryState, OpKind, register

__all__ = [
    "BREAKER",
    "LEASE",
    "LIMITS",
    "PAUSE",
    "RATE",
    "SLOT",
    "breaker_states",
    "effective_limit",
    "effective_rate",
    "override",
]


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


_MS_BYTES: dict[float, bytes] = {}


def _ms_arg(seconds: float) -> bytes:
    """``_ms(seconds)`` as the bytes the scripts get: a lease's TTL is one of a few values,
    so each is converted once, not on every acquire and release."""
    arg = _MS_BYTES.get(seconds)
    if arg is None:
        if len(_MS_BYTES) >= 1024:
            _MS_BYTES.clear()
        arg = _MS_BYTES[seconds] = str(_ms(seconds)).encode()
    return arg


# ---------------------------------------------------------------- rate limit (GCRA)


#: Where the memory backend keeps limits set at run time: ``extra[LIMITS][hash][field]``.
LIMITS = "limits"


def override(state: MemoryState, overrides: str | None, field: str) -> str | None:
    """The entry for ``field``, else ``"*"``, of a hash of values set at run time."""
    if overrides is None:
        return None
    entries = state.extra.get(LIMITS, {}).get(overrides, {})
    found: str | None = entries.get(field) or entries.get("*")
    return found


def effective_rate(state: MemoryState, op: RateOp) -> tuple[float, int]:
    """``(interval, burst)`` of ``op`` after a limit set at run time, as gcra.lua's parse."""
    spec = override(state, op.overrides, op.field)
    if spec is None:
        return op.interval, op.burst
    interval_us, burst = spec.split()
    return float(interval_us) / 1_000_000, max(int(burst), op.cost)


class _Rate:
    def wait(self, state: MemoryState, op: RateOp, now: float) -> tuple[float, bool]:
        interval, burst = effective_rate(state, op)
        tat = max(state.value(op.key, now) or 0.0, now)
        return max(tat + (op.cost - burst) * interval - now, 0.0), False

    def commit(self, state: MemoryState, op: RateOp, at: float, now: float, flag: bool) -> int:
        interval, burst = effective_rate(state, op)
        start = max(state.value(op.key, now) or 0.0, now, at)
        new_tat = start + op.cost * interval
        state.values[op.key] = (new_tat, new_tat + 0.001)
        # (at - start) is exactly 0 for an idle bucket; the epsilon absorbs float noise.
        return max(math.floor((at - start) / interval + burst - op.cost + 1e-6), 0)

    def release(self, state: MemoryState, op: RateOp, now: float) -> int:
        # Only an admission's undo releases a rate op (tokens are spent otherwise): give
        # back exactly this call's tokens, as gcra.lua's release.
        tat = state.value(op.key, now)
        if tat is None:
            return 0
        interval, _ = effective_rate(state, op)
        tat -= op.cost * interval
        if tat <= now:
            del state.values[op.key]
        else:
            state.values[op.key] = (tat, tat + 0.001)
        return 1

    def renew(self, state: MemoryState, op: RateOp, now: float) -> bool:
        return True


def _encode_rate(op: RateOp, release: bool) -> tuple[list[str], list[Any]]:
    if op.overrides is None:
        return [op.key], [repr(op.interval * 1_000_000), op.burst, op.cost]
    return [op.key, op.overrides], [repr(op.interval * 1_000_000), op.burst, op.cost, op.field]


def _localize_rate(op: RateOp, spec: str | None) -> RateOp:
    # gcra.lua's parse of "<interval_us> <burst>", done by the client (spread_limits.py).
    interval, burst = op.interval, op.burst
    if spec is not None and len(parts := spec.split()) == 2:
        interval, burst = float(parts[0]) / 1_000_000, max(int(parts[1]), op.cost)
    return RateOp(op.key, interval, burst, op.cost, None, op.field)


RATE = register(
    OpKind(
        RateOp,
        "rl",
        "gcra",
        _encode_rate,
        _Rate(),
        bucket=True,
        undo=lambda op: op,
        localize=_localize_rate,
    )
)


class _Pause:
    def wait(self, state: MemoryState, op: PauseOp, now: float) -> tuple[float, bool]:
        return 0.0, False  # a pause is never refused

    def commit(self, state: MemoryState, op: PauseOp, at: float, now: float, flag: bool) -> int:
        tat = state.value(op.key, now) or 0.0
        target = now + op.seconds + op.tolerance
        if tat < target:  # never shorten a longer backlog
            tat = target
            state.values[op.key] = (tat, tat + 0.001)
        # Microseconds until a call of cost 1 passes again (rounded: float noise).
        return max(round((tat - op.tolerance - now) * 1_000_000), 0)

    def release(self, state: MemoryState, op: PauseOp, now: float) -> int:
        return 0

    def renew(self, state: MemoryState, op: PauseOp, now: float) -> bool:
        return True


def _encode_pause(op: PauseOp, release: bool) -> tuple[list[str], list[Any]]:
    return [op.key], [repr(op.seconds * 1_000_000), repr(op.tolerance * 1_000_000)]


PAUSE = register(OpKind(PauseOp, "rlp", "gcra", _encode_pause, _Pause()))


# ---------------------------------------------------------------- lease (locks, claims)


class _Lease:
    def wait(self, state: MemoryState, op: LeaseOp, now: float) -> tuple[float, bool]:
        held = state.lease(op.key, now)
        if held is not None and held[0] != op.owner:
            return max(held[1] - now, 0.001), False
        return 0.0, False

    def commit(self, state: MemoryState, op: LeaseOp, at: float, now: float, flag: bool) -> int:
        if op.drop:
            state.leases.pop(op.key, None)
            return 0
        state.leases[op.key] = (op.owner, now + op.ttl)
        if op.fence_key is None:
            return 0
        token = max(state.fences.get(op.fence_key, 0) + 1, int(now * 1_000_000))
        state.fences[op.fence_key] = token
        return token

    def release(self, state: MemoryState, op: LeaseOp, now: float) -> int:
        held = state.lease(op.key, now)
        if op.drop:  # an admission's undo: restore the claim it dropped, unless taken
            if held is None:
                state.leases[op.key] = (op.owner, now + op.ttl)
            return int(held is None)
        ours = held is not None and held[0] == op.owner
        if ours:
            del state.leases[op.key]
            state.wake(op.wakeup_key, 1)
        return int(ours)

    def renew(self, state: MemoryState, op: LeaseOp, now: float) -> bool:
        held = state.lease(op.key, now)
        ours = held is not None and held[0] == op.owner
        if ours:
            state.leases[op.key] = (op.owner, now + op.ttl)
        return ours


def _encode_lease(op: LeaseOp, release: bool) -> tuple[list[str], list[Any]]:
    extra = op.wakeup_key if release else op.fence_key
    keys = [op.key] if extra is None else [op.key, extra]
    mode = b"drop" if op.drop else b"take"
    if op.park_key is None or op.park_due is None:
        return keys, [op.owner, _ms_arg(op.ttl), mode, b"0"]
    return [*keys, op.park_key, op.park_due], [op.owner, _ms_arg(op.ttl), mode, b"1"]


LEASE = register(
    OpKind(
        LeaseOp,
        "lease",
        "lease",
        _encode_lease,
        _Lease(),
        holds=lambda op: not op.drop,
        undo=lambda op: op,  # release gives a taken lease back, restores a dropped claim
    )
)


# ---------------------------------------------------------------- slot (concurrency)


def effective_limit(state: MemoryState, op: SlotOp) -> int:
    """``op``'s slot count after one set at run time, as slot.lua's parse."""
    spec = override(state, op.overrides, op.field)
    return op.limit if spec is None else int(spec)


class _Slot:
    def wait(self, state: MemoryState, op: SlotOp, now: float) -> tuple[float, bool]:
        holders = state.holders(op.key, now)
        if op.owner in holders or len(holders) < effective_limit(state, op):
            return 0.0, False
        return max(min(holders.values()) - now, 0.001), False

    def commit(self, state: MemoryState, op: SlotOp, at: float, now: float, flag: bool) -> int:
        state.holders(op.key, now)[op.owner] = now + op.ttl
        return 0

    def release(self, state: MemoryState, op: SlotOp, now: float) -> int:
        ours = state.holders(op.key, now).pop(op.owner, None) is not None
        if ours:
            state.wake(op.wakeup_key, effective_limit(state, op))
        return int(ours)

    def renew(self, state: MemoryState, op: SlotOp, now: float) -> bool:
        holders = state.holders(op.key, now)
        ours = op.owner in holders
        if ours:
            holders[op.owner] = now + op.ttl
        return ours


def _encode_slot(op: SlotOp, release: bool) -> tuple[list[str], list[Any]]:
    keys = [op.key, op.wakeup_key] if release and op.wakeup_key else [op.key]
    args: list[Any] = [op.owner, _ms_arg(op.ttl), op.limit, b"0"]
    if op.overrides is not None:
        keys.append(op.overrides)
    if op.park_key is not None and op.park_due is not None:
        keys += [op.park_key, op.park_due]
        args[3] = b"1"
    if op.overrides is not None:
        args.append(op.field)
    return keys, args


def _localize_slot(op: SlotOp, spec: str | None) -> SlotOp:
    # slot.lua's parse of "<limit>", done by the client (spread_limits.py).
    limit = int(spec) if spec is not None and spec.strip().isdigit() else op.limit
    return dataclasses.replace(op, limit=limit, overrides=None)


SLOT = register(
    OpKind(
        SlotOp,
        "slot",
        "slot",
        _encode_slot,
        _Slot(),
        holds=lambda op: True,
        undo=lambda op: op,
        localize=_localize_slot,
    )
)


# ---------------------------------------------------------------- circuit breaker


def breaker_states(state: MemoryState) -> BreakerStates:
    """The memory backend's breakers (kept in ``state.extra``)."""
    states: BreakerStates = state.extra.setdefault(BREAKER_CODE, BreakerStates())
    return states


class _Breaker:
    def wait(self, state: MemoryState, op: BreakerOp, now: float) -> tuple[float, bool]:
        return breaker_states(state).check(op, now)

    def commit(self, state: MemoryState, op: BreakerOp, at: float, now: float, flag: bool) -> int:
        return breaker_states(state).commit(op, now, flag)

    def release(self, state: MemoryState, op: BreakerOp, now: float) -> int:
        return breaker_states(state).release(op, now)

    def renew(self, state: MemoryState, op: BreakerOp, now: float) -> bool:
        return breaker_states(state).renew(op, now)


#: id(params) -> (params, their bytes): a breaker's settings are one tuple, kept by it.
_PARAMS_BYTES: dict[int, tuple[tuple[Any, ...], tuple[bytes, ...]]] = {}


def _params_arg(params: tuple[Any, ...]) -> tuple[bytes, ...]:
    """A breaker's 12 settings as the bytes the scripts get, converted once per tuple."""
    cached = _PARAMS_BYTES.get(id(params))
    if cached is None or cached[0] is not params:
        if len(_PARAMS_BYTES) >= 1024:
            _PARAMS_BYTES.clear()
        cached = _PARAMS_BYTES[id(params)] = (params, tuple(str(p).encode() for p in params))
    return cached[1]


def _encode_breaker(op: BreakerOp, release: bool) -> tuple[list[str], list[Any]]:
    return [op.key, op.window_key, op.probes_key], [op.owner, op.mode, *_params_arg(op.params)]


BREAKER_CODE = "cb"


def _undo_breaker(op: BreakerOp) -> BreakerOp:
    # Released with the outcome "ignored": a half-open probe it took is given back, and
    # nothing is recorded.
    return BreakerOp(op.key, op.window_key, op.probes_key, op.owner, "i", op.params, op.probe_ttl)


BREAKER = register(
    OpKind(BreakerOp, BREAKER_CODE, "breaker", _encode_breaker, _Breaker(), undo=_undo_breaker)
)
