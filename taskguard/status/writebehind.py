"""Reading the queues: write-behind namespaces, drain pools and their leases, parked tasks.

The write-behind figures are the drain's own (:func:`taskguard.drain.metrics.queue_metrics`,
the numbers the Prometheus gauges export), over the partitions the drain would find
(:func:`taskguard.drain.discovery.queued_partitions`: the registry, and a ``SCAN … TYPE
stream`` sweep). Parked tasks are :class:`taskguard.backend.parking.Parking`'s counts,
which :meth:`taskguard.Client.parked` returns too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from taskguard.backend.parking import Parking
from taskguard.backend.redis import RedisBackend
from taskguard.drain.discovery import queued_partitions
from taskguard.drain.metrics import DrainMetrics, queue_metrics
from taskguard.drain.partition import Partition

from .derive import seconds_left, text
from .model import DrainPoolStatus, ParkedLot, ParkedWork, PartitionLease, WriteBehindNamespace

__all__ = ["read_drain_pools", "read_parked", "read_write_behind"]


def read_parked(backend: RedisBackend) -> ParkedWork:
    """Tasks parked per guard key, and hand-backs not yet arrived."""
    parking = Parking(backend)
    lots = []
    for guard_key, tasks in sorted(parking.counts().items()):
        kind, name, key = backend.keys.guard_parts(guard_key) or ("", guard_key, None)
        lots.append(ParkedLot(kind, name, key, guard_key, tasks))
    return ParkedWork(tuple(lots), parking.in_flight())


def read_write_behind(
    backend: RedisBackend, also: Iterable[str] = ()
) -> tuple[WriteBehindNamespace, ...]:
    """Every write-behind namespace with work, registered, or with dead letters.

    Args:
        backend: The Redis backend the caches write to.
        also: More namespaces to report (those whose dead-letter stream was found).
    """
    found = queued_partitions(backend)
    for namespace in also:
        found.setdefault(namespace, set())
    partitions = {
        namespace: [Partition.of(backend.keys, namespace, i) for i in sorted(indices)]
        for namespace, indices in sorted(found.items())
    }
    leases = _leases([p for parts in partitions.values() for p in parts], backend)
    out = []
    for namespace, parts in partitions.items():
        figures = queue_metrics(backend, parts) if parts else _dead_letters_only(backend, namespace)
        out.append(
            WriteBehindNamespace(
                name=namespace,
                partitions=len(parts),
                backlog=figures.backlog,
                oldest_age=figures.oldest_age,
                pending=figures.pending,
                dead_letters=figures.dead_letters,
                leases=tuple(lease for p in parts if (lease := leases.get(p.lease))),
            )
        )
    return tuple(out)


def _dead_letters_only(backend: RedisBackend, namespace: str) -> DrainMetrics:
    with backend.commands("status dead letters") as client:
        return DrainMetrics(dead_letters=int(client.xlen(backend.keys.dead_letters(namespace))))


def _leases(partitions: list[Partition], backend: RedisBackend) -> dict[str, PartitionLease]:
    """Partition lease key -> its holder, for the leases held."""
    if not partitions:
        return {}
    with backend.commands("status drain leases") as client:
        pipe = client.pipeline(transaction=False)
        for partition in partitions:
            pipe.get(partition.lease)
            pipe.pttl(partition.lease)
        replies = pipe.execute()
    held = {}
    for i, partition in enumerate(partitions):
        owner, pttl = replies[2 * i], replies[2 * i + 1]
        if owner is not None:
            held[partition.lease] = PartitionLease(partition.index, text(owner), seconds_left(pttl))
    return held


def read_drain_pools(backend: RedisBackend, now: float) -> tuple[DrainPoolStatus, ...]:
    """The live drain pools (each registers with an expiry it keeps moving forward).

    Args:
        backend: The Redis backend.
        now: Server time, epoch seconds.
    """
    with backend.commands("status drain pools") as client:
        members: Any = client.zrange(backend.keys.drain_pools(), 0, -1, withscores=True)
    now_ms = now * 1000
    pools = ((text(name), float(score)) for name, score in members)
    return tuple(
        DrainPoolStatus(name, (expiry - now_ms) / 1000) for name, expiry in pools if expiry > now_ms
    )
