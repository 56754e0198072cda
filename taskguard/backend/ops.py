"""The atomic operations a backend runs, as plain values.

A guard turns itself into one op per call; the admission path hands the whole list to the
backend, which checks them all and commits all of them or none in one round trip.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from .registry import BUCKET_TYPES

__all__ = [
    "Admission",
    "BreakerOp",
    "BucketOp",
    "Held",
    "LeaseOp",
    "Op",
    "PauseOp",
    "RateOp",
    "SlotOp",
    "new_owner",
]


def _owner_prefix() -> str:
    return os.urandom(8).hex() + "."


_prefix = _owner_prefix()
_counter = itertools.count(1)


def _reseed_owners() -> None:
    # A forked child must not hand out its parent's tokens.
    global _prefix, _counter
    _prefix, _counter = _owner_prefix(), itertools.count(1)


os.register_at_fork(after_in_child=_reseed_owners)


def new_owner() -> str:
    """A fresh owner token: unique per holder, across processes and hosts.

    A random 64-bit prefix drawn once per process (again in a forked child) and a counter:
    as unique as a ``uuid4`` where it matters (no two holders share one), at a fraction of
    its cost (no system call, no ``UUID`` object per lease).

    Example:
        >>> new_owner() != new_owner()
        True
    """
    return f"{_prefix}{next(_counter):x}"


@dataclass(frozen=True, slots=True)
class RateOp:
    """Take ``cost`` tokens from the GCRA bucket at ``key``.

    Attributes:
        key: Full Redis key (built by :class:`taskguard.keys.KeySchema`).
        interval: Seconds per token (the emission interval, period / limit).
        burst: Tokens an idle bucket can hand out at once (>= cost).
        cost: Tokens this call takes.
        overrides: When set, the hash of limits set at run time for this limiter
            (``taskguard limit set``): an entry for ``field``, else for ``"*"``, replaces
            ``interval`` and ``burst`` inside the admission script.
        field: This bucket's entry in ``overrides``: ``"k:<bucket>"``, or ``"*"``.
    """

    key: str
    interval: float
    burst: int
    cost: int = 1
    overrides: str | None = None
    field: str = "*"


@dataclass(frozen=True, slots=True)
class PauseOp:
    """Pause the GCRA bucket at ``key``: no call passes for ``seconds`` (server time).

    It pushes the bucket's TAT to ``now + seconds + tolerance`` unless it is later
    already, so a pause never shortens a longer backlog, and calls refused meanwhile
    reserve their slots from the end of the pause on (see lib/gcra.lua).

    Attributes:
        key: The bucket's full key (the same as its :class:`RateOp`'s).
        seconds: How long the bucket refuses every call, from the server's ``now``.
        tolerance: The bucket's ``(burst - 1) x interval`` in seconds: a bucket admits a
            call while its TAT is at most this far ahead, so the TAT goes this much past
            the pause's end for no call to pass before it.
    """

    key: str
    seconds: float
    tolerance: float = 0.0


@dataclass(frozen=True, slots=True)
class LeaseOp:
    """An owner-checked lease on ``key``: a lock, or a uniqueness claim.

    In admission it is taken (or, with ``drop``, checked and deleted if ours); it is
    released and renewed by its owner only. Another owner's lease is never touched.

    Attributes:
        key: The lease key.
        owner: The owner token (unique per holder).
        ttl: Lease duration in seconds; the heartbeat renews it while held.
        fence_key: When set, taking the lease hands out a fencing token from this key.
        wakeup_key: When set, releasing wakes one waiter blocked on this list.
        drop: Admission only checks that nobody else holds it, and deletes ours.
        purpose: ``"lock"`` (one run at a time) or ``"claim"`` (publish-time uniqueness:
            another owner means a duplicate message).
        park_key: When set, the lot of tasks parked on this lock: while it holds any,
            a newcomer is refused (they come first), and a release reports them.
        park_due: With ``park_key``: the lots' due index, where a release that finds
            tasks parked marks the lot for the next sweep.
    """

    key: str
    owner: str
    ttl: float
    fence_key: str | None = None
    wakeup_key: str | None = None
    drop: bool = False
    purpose: str = "lock"
    park_key: str | None = None
    park_due: str | None = None


@dataclass(frozen=True, slots=True)
class SlotOp:
    """One of ``limit`` concurrency slots under ``key``, held as an expiring lease.

    Attributes:
        key: The holders' set.
        owner: The owner token (unique per holder).
        ttl: Lease duration in seconds; the heartbeat renews it while held.
        limit: How many holders may hold a slot at once.
        wakeup_key: When set, releasing wakes a waiter blocked on this list.
        park_key: When set, the lot of tasks parked on this cap: while it holds any,
            a newcomer is refused (they come first), and a release reports them.
        park_due: With ``park_key``: the lots' due index, where a release that finds
            tasks parked marks the lot for the next sweep.
        overrides: When set, the hash of slot counts set at run time for this cap
            (``taskguard limit set --kind cap``): an entry for ``field``, else for
            ``"*"``, replaces ``limit`` inside the admission script (and the parking
            scripts' count of free slots).
        field: This key's entry in ``overrides``: ``"k:<key>"``, or ``"*"``.
    """

    key: str
    owner: str
    ttl: float
    limit: int
    wakeup_key: str | None = None
    park_key: str | None = None
    park_due: str | None = None
    overrides: str | None = None
    field: str = "*"


@dataclass(frozen=True, slots=True)
class BreakerOp:
    """A call through circuit breaker ``key``: admitted at start, its outcome recorded at
    the end (``mode``), in the admission and release scripts (see lib/breaker.lua).

    Attributes:
        key: The breaker's state hash.
        window_key: Its sliding window of outcomes.
        probes_key: Its half-open probe leases.
        owner: This call's token (a probe lease is held under it).
        mode: ``"check"`` in admission; the outcome code at release.
        params: The breaker's settings, in lib/breaker.lua's argument order (3 to 14).
        probe_ttl: Probe lease seconds (renewed by the heartbeat while the probe runs).
    """

    key: str
    window_key: str
    probes_key: str
    owner: str
    mode: str
    params: tuple[Any, ...]
    probe_ttl: float

    @property
    def ttl(self) -> float:
        return self.probe_ttl


class Op(Protocol):
    """Any op of a registered kind (see :mod:`taskguard.backend.registry`)."""

    @property
    def key(self) -> str:
        """Its first key (the one a denial names)."""
        ...


class Held(Op, Protocol):
    """An op that holds something until released (renewed by the heartbeat meanwhile)."""

    @property
    def ttl(self) -> float:
        """Seconds it is held for after each renewal."""
        ...


class BucketOp(Op, Protocol):
    """An op of a token-bucket kind (``OpKind.bucket``): it may reserve its future slot."""

    @property
    def interval(self) -> float:
        """Seconds per token."""
        ...


class Admission(NamedTuple):
    """What the backend decided for a list of ops (a named tuple: cheap to build, frozen).

    Attributes:
        allowed: True when every op passed and was committed.
        retry_after: Seconds until all ops would pass (0 when allowed).
        denied: Index of the first op that refused, or ``None``.
        reserved: True when a denial reserved the future slot at ``retry_after``: the
            caller may run then without asking again (see docs/design.md, "Reservations").
        remaining: Tokens left in the tightest rate-limit bucket after this call, or -1
            when no rate-limit op was involved.
        tokens: When allowed, one value per op: the fencing token of a lease taken with
            a fence key; for a breaker, 1 for a half-open probe and 2 for a probe that
            moved it from open to half-open; else 0.
    """

    allowed: bool
    retry_after: float = 0.0
    denied: int | None = None
    reserved: bool = False
    remaining: int = -1
    tokens: tuple[int, ...] = ()


def granted(ops: Sequence[Op], values: Sequence[int]) -> Admission:
    """The admission of ``ops``, from the per-op values their commit returned."""
    if len(ops) == 1:  # the common single guard
        if type(ops[0]) in BUCKET_TYPES:
            return Admission(True, 0.0, None, False, values[0], (0,))
        return Admission(True, 0.0, None, False, -1, (values[0],))
    buckets = [type(op) in BUCKET_TYPES for op in ops]
    left = [value for bucket, value in zip(buckets, values, strict=True) if bucket]
    tokens = tuple(0 if bucket else value for bucket, value in zip(buckets, values, strict=True))
    return Admission(True, remaining=min(left, default=-1), tokens=tokens)


ALLOWED_EMPTY = Admission(allowed=True)
