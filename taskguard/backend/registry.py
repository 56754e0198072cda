"""The op-kind registry: everything a backend needs to know about one kind of op.

An op is a frozen value a guard hands to the backend (take tokens, take a lease, hold a
slot, pass a breaker). Each kind of op is declared once, here, by an :class:`OpKind`:

- ``code`` and ``lib``: the name the Lua side registers it under (``KINDS[code]`` in
  ``scripts/lib/<lib>.lua``), so the Redis backend includes that library and tags the op;
- ``encode``: its KEYS and ARGV for the scripts, at admission/renewal and at release;
- ``memory``: its semantics in the memory backend, kept in step with the Lua;
- ``holds``: whether an admitted op leaves something held (renewed by the heartbeat and
  given back at release);
- ``bucket``: whether it is a token bucket (its admission value is the tokens left, and a
  denial may reserve its future slot);
- ``undo``: on a spread key schema, an admission across slots gives back what an earlier
  slot took when a later one refuses (:mod:`taskguard.backend.spread`): ``undo(op)`` is
  the op whose *release* does that (None: nothing to give back). A kind without
  ``undo`` cannot be undone: its slot is taken last;
- ``localize``: on a spread key schema, ``localize(op, spec)`` is ``op`` with the entry
  ``spec`` (or None) of its hash of limits set at run time applied and the hash left out,
  when that hash lies in another slot (:mod:`taskguard.backend.spread_limits`).

A new kind of guard registers its kind from its own module (``register(OpKind(...))``):
the backends dispatch on the registry and never name a kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

__all__ = [
    "BUCKET_TYPES",
    "MemoryKind",
    "MemoryState",
    "OpKind",
    "kind_of",
    "register",
    "registered",
]

OpT = TypeVar("OpT")
OpT_contra = TypeVar("OpT_contra", contravariant=True)


@dataclass
class MemoryState:
    """The memory backend's data, shared by every op kind's memory semantics.

    Attributes:
        values: key -> (value, expires_at): plain expiring values (GCRA TATs...).
        leases: key -> (owner, expires_at).
        fences: fence key -> last fencing token.
        slots: key -> {owner: expires_at}.
        wakeups: wake-up list -> pending wake-ups.
        extra: Room for a kind's own data, under the kind's code.
    """

    values: dict[str, tuple[float, float]] = field(default_factory=dict)
    leases: dict[str, tuple[str, float]] = field(default_factory=dict)
    fences: dict[str, int] = field(default_factory=dict)
    slots: dict[str, dict[str, float]] = field(default_factory=dict)
    wakeups: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def value(self, key: str, now: float) -> float | None:
        """The unexpired value at ``key``, or None."""
        item = self.values.get(key)
        if item is None:
            return None
        value, expires_at = item
        if expires_at <= now:
            del self.values[key]
            return None
        return value

    def lease(self, key: str, now: float) -> tuple[str, float] | None:
        """The unexpired ``(owner, expires_at)`` of lease ``key``, or None."""
        item = self.leases.get(key)
        if item is not None and item[1] <= now:
            del self.leases[key]
            return None
        return item

    def holders(self, key: str, now: float) -> dict[str, float]:
        """The unexpired holders of slot set ``key`` (a live dict)."""
        holders = self.slots.setdefault(key, {})
        for owner in [o for o, expires in holders.items() if expires <= now]:
            del holders[owner]
        return holders

    def wake(self, key: str | None, limit: int) -> None:
        """Record one wake-up on list ``key`` (at most ``limit`` pending)."""
        if key is not None:
            self.wakeups[key] = min(self.wakeups.get(key, 0) + 1, limit)


class MemoryKind(Protocol[OpT_contra]):
    """An op kind's semantics in the memory backend (called under the backend's lock)."""

    def wait(self, state: MemoryState, op: OpT_contra, now: float) -> tuple[float, bool]:
        """Seconds until ``op`` would pass (0: now), and a flag :meth:`commit` receives."""
        ...

    def commit(self, state: MemoryState, op: OpT_contra, at: float, now: float, flag: bool) -> int:
        """Apply an admitted ``op`` (``at`` > ``now``: a reservation); its admission value."""
        ...

    def release(self, state: MemoryState, op: OpT_contra, now: float) -> int:
        """Give back or record ``op``; the value the release script returns for it."""
        ...

    def renew(self, state: MemoryState, op: OpT_contra, now: float) -> bool:
        """Extend what ``op`` holds by its TTL; False when it is no longer ours."""
        ...


@dataclass(frozen=True)
class OpKind(Generic[OpT]):
    """One kind of op, as both backends see it (see the module docstring)."""

    type: type[OpT]
    code: str
    lib: str
    encode: Callable[[OpT, bool], tuple[list[str], list[Any]]]
    memory: MemoryKind[OpT]
    holds: Callable[[OpT], bool] = field(default=lambda op: False)
    bucket: bool = False
    undo: Callable[[OpT], Any] | None = None
    localize: Callable[[OpT, str | None], OpT] | None = None


_KINDS: dict[type, OpKind[Any]] = {}
#: The op types of token-bucket kinds (read on the hot path: a set lookup, no call).
BUCKET_TYPES: set[type] = set()


def register(kind: OpKind[OpT]) -> OpKind[OpT]:
    """Add ``kind`` to the registry (once per op type and per Lua code).

    Raises:
        ValueError: Another kind already uses this op type or code.
    """
    for other in _KINDS.values():
        if other.type is not kind.type and other.code == kind.code:
            raise ValueError(f"op kind code {kind.code!r} is taken by {other.type.__name__}")
    existing = _KINDS.get(kind.type)
    if existing is not None and existing != kind:
        raise ValueError(f"{kind.type.__name__} is registered already")
    _KINDS[kind.type] = kind
    if kind.bucket:
        BUCKET_TYPES.add(kind.type)
    return kind


def kind_of(op: object) -> OpKind[Any]:
    """The registered kind of ``op``.

    Raises:
        TypeError: ``op``'s type was never registered.
    """
    try:
        return _KINDS[type(op)]
    except KeyError:
        raise TypeError(f"{type(op).__name__} is not a registered op kind") from None


def registered() -> list[OpKind[Any]]:
    """Every registered kind, in registration order (the order Lua libraries load in)."""
    return list(_KINDS.values())
