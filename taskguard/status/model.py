"""What ``taskguard status`` shows, as plain frozen values (no I/O, no rendering).

:func:`taskguard.status.read_status` returns a :class:`Status`; the CLI renders it as
tables or, through :meth:`Status.as_dict`, as JSON, so both show the same data. Times are
seconds; ``None`` means "not known" (never "zero").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BreakerStatus",
    "DrainPoolStatus",
    "LockHolder",
    "ParkedLot",
    "ParkedWork",
    "PartitionLease",
    "QuotaUsage",
    "RateBucket",
    "SlotHolder",
    "SlotSet",
    "Status",
    "WriteBehindNamespace",
]


@dataclass(frozen=True)
class RateBucket:
    """One GCRA bucket of a rate limit.

    Redis keeps only the bucket's theoretical arrival time (TAT); the rate and burst live
    in the code that calls it. So the level in tokens is known only when the caller of
    :func:`~taskguard.status.read_status` passes the limit (``limits=``).

    Attributes:
        name: The limiter's name (a task's name by default).
        key: The bucket (``None``: the limiter's one shared bucket).
        backlog: Seconds until the bucket is full again (TAT minus now, at least 0): 0
            means idle; 10 at ``"1/s"`` means 10 tokens are spent.
        tokens: Tokens a call could take now, when the limit is known, else ``None``.
        burst: The bucket's size, when the limit is known, else ``None``.
    """

    name: str
    key: str | None
    backlog: float
    tokens: int | None = None
    burst: int | None = None


@dataclass(frozen=True)
class LockHolder:
    """A held lock (``kind="lock"``) or publish-time uniqueness claim (``"unique"``).

    Attributes:
        kind: ``"lock"`` or ``"unique"``.
        name: The lock's name (a task's name for a ``Lock`` guard).
        key: The lock's key (``None``: a key-less lock).
        owner: The holder's token (for a task: ``<task id>:<nonce>``; for a claim, the
            message's task id).
        lease_left: Seconds before the lease expires unless renewed (``None``: no expiry).
        fencing_token: The holder's fencing token (locks only).
        age: Seconds since it was taken, read from the fencing token (a lock's token is
            the server time in microseconds when it was taken, unless tokens were handed
            out faster than that); ``None`` when not known.
    """

    kind: str
    name: str
    key: str | None
    owner: str
    lease_left: float | None
    fencing_token: int | None = None
    age: float | None = None


@dataclass(frozen=True)
class SlotHolder:
    """One live holder of a concurrency slot (a semaphore's or a ``Concurrency`` cap's)."""

    owner: str
    lease_left: float


@dataclass(frozen=True)
class SlotSet:
    """The live holders of one concurrency key (the cap itself is not stored in Redis)."""

    name: str
    key: str | None
    holders: tuple[SlotHolder, ...]


@dataclass(frozen=True)
class BreakerStatus:
    """A circuit breaker's shared state.

    Attributes:
        name: The breaker's name.
        state: ``closed``, ``open``, ``half_open``, ``forced_open`` or ``disabled``, as a
            call would meet it now.
        open_left: Seconds until an open breaker lets a probe through (``None`` unless
            ``state`` is ``open``).
        opens: Consecutive opens (the open time grows with them).
        window: ``"count"`` (last N calls), ``"time"`` (last N seconds) or ``""`` (no
            call recorded since the last transition).
        calls: Calls in the window. For a time window, every 1-second bucket still
            stored is counted, which may include a few seconds past the window until
            the next call prunes them.
        failures: Failed calls in the window.
        slow_calls: Slow calls in the window.
        consecutive_failures: Failures in a row (closed state).
        probes: Half-open probes running now.
        probe_successes: Probe successes so far in this half-open period.
    """

    name: str
    state: str
    open_left: float | None
    opens: int
    window: str
    calls: int
    failures: int
    slow_calls: int
    consecutive_failures: int
    probes: int
    probe_successes: int


@dataclass(frozen=True)
class QuotaUsage:
    """A calendar quota's current window (the limit itself is not stored in Redis).

    Attributes:
        name: The quota's name.
        key: The quota's key.
        used: Calls taken in the current window (0 once the window is over).
        window_start: When the window began (epoch seconds).
        resets_in: Seconds until the window ends (``None``: not known).
    """

    name: str
    key: str | None
    used: int
    window_start: float
    resets_in: float | None


@dataclass(frozen=True)
class ParkedLot:
    """Tasks parked on one guard key, waiting for a release to hand them back.

    Attributes:
        kind: The guard's key kind: ``"slots"`` (a concurrency cap) or ``"lock"``.
        name: The guard's name.
        key: The guard's key.
        guard_key: The Redis key of the guard (as :meth:`Client.parked` reports it).
        tasks: Tasks parked there.
    """

    kind: str
    name: str
    key: str | None
    guard_key: str
    tasks: int


@dataclass(frozen=True)
class ParkedWork:
    """Parked work (docs/deferral.md): lots per guard key, and hand-backs in flight."""

    lots: tuple[ParkedLot, ...] = ()
    in_flight: int = 0


@dataclass(frozen=True)
class PartitionLease:
    """The drain pool holding one write-behind partition."""

    partition: int
    owner: str
    lease_left: float | None


@dataclass(frozen=True)
class WriteBehindNamespace:
    """One write-behind namespace's queue.

    Attributes:
        name: The namespace.
        partitions: Partitions with work or registered.
        backlog: Records queued and not yet written.
        oldest_age: Seconds since the oldest queued record was written (0 when empty).
        pending: Records delivered to a drain and not yet acknowledged.
        dead_letters: Records in the dead-letter stream.
        leases: The partitions a drain pool holds, with the pool's name.
    """

    name: str
    partitions: int
    backlog: int
    oldest_age: float
    pending: int
    dead_letters: int
    leases: tuple[PartitionLease, ...] = ()


@dataclass(frozen=True)
class DrainPoolStatus:
    """A live drain pool (a worker's, or a ``taskguard drain``)."""

    name: str
    expires_in: float


@dataclass(frozen=True)
class Status:
    """Everything taskguard keeps in Redis under one key prefix, read at one time.

    Attributes:
        prefix: The key prefix read.
        server_time: Redis ``TIME`` when the read began (epoch seconds).
        elapsed: Seconds the read took (SCAN and pipelined reads).
        rate_limits: Rate-limit buckets with state (an idle bucket has none).
        locks: Held locks and uniqueness claims.
        slots: Concurrency keys with live holders.
        breakers: Circuit breakers with state.
        quotas: Calendar quotas with state.
        parked: Parked work.
        write_behind: Write-behind namespaces.
        drain_pools: Live drain pools.
        limits_known: Names of the rate limits whose rate was given, so their buckets
            show tokens; the others show the backlog only.
    """

    prefix: str
    server_time: float
    elapsed: float
    rate_limits: tuple[RateBucket, ...] = ()
    locks: tuple[LockHolder, ...] = ()
    slots: tuple[SlotSet, ...] = ()
    breakers: tuple[BreakerStatus, ...] = ()
    quotas: tuple[QuotaUsage, ...] = ()
    parked: ParkedWork = field(default_factory=ParkedWork)
    write_behind: tuple[WriteBehindNamespace, ...] = ()
    drain_pools: tuple[DrainPoolStatus, ...] = ()
    limits_known: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Plain dicts, lists and scalars, for ``json.dumps``."""
        plain: dict[str, Any] = _plain(self)
        return plain


#: Field names per dataclass, read once (``dataclasses.fields`` is slow for 10k rows).
_FIELDS: dict[type, tuple[str, ...]] = {}


def _plain(value: Any) -> Any:
    """``dataclasses.asdict`` without its deep copies: the values here are immutable
    scalars, so the walk only rebuilds dataclasses as dicts and tuples as lists."""
    names = _FIELDS.get(type(value))
    if names is None and dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = _FIELDS[type(value)] = tuple(f.name for f in dataclasses.fields(value))
    if names is not None:
        return {name: _plain(getattr(value, name)) for name in names}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value
