"""One write-behind partition as the drain sees it: its keys, and the Redis commands on it.

Every partition is read by the consumer group :data:`GROUP`. A pool holds a partition's
lease before it reads, so one consumer reads a partition at a time and per-key order holds.
Redis is reached only through the backend's port (``run_script``, ``run_script_many``,
``commands``), which maps its errors to :class:`~taskguard.errors.BackendUnavailable`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.crc import key_slot

from taskguard.backend.redis import RedisBackend
from taskguard.cache.records import version_of
from taskguard.keys import KeySchema

from .batch import Entry, RawEntry, Rejected, id_order
from .cluster_read import read_on_masters

__all__ = [
    "GROUP",
    "Partition",
    "dead_letter",
    "ensure_groups",
    "with_pending",
]

#: The consumer group every drain pool reads with.
GROUP = "taskguard-drain"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(eq=False)
class Partition:
    """Partition ``index`` of ``namespace``, and the drain's bookkeeping for it.

    Attributes:
        needs_claim: Its pending entries must be claimed before new ones are read (set
            when the lease is taken: what a previous consumer left unacknowledged).
        last_scan: Monotonic time of the last scan for idle pending entries.
        surrender: The pool holds more than its share: release after the current batch.
        had_group: This pool has seen the partition's consumer group (so a missing one
            means the stream was deleted, with what it held).
    """

    namespace: str
    index: int
    stream: str
    dirty: str
    lease: str
    dead_letters: str
    needs_claim: bool = True
    last_scan: float = 0.0
    surrender: bool = False
    had_group: bool = False

    @classmethod
    def of(cls, keys: KeySchema, namespace: str, index: int) -> Partition:
        """The partition's keys, from the key schema."""
        return cls(
            namespace=namespace,
            index=index,
            stream=keys.cache_stream(namespace, index),
            dirty=keys.cache_dirty(namespace, index),
            lease=keys.drain_lease(namespace, index),
            dead_letters=keys.dead_letters(namespace),
        )

    @property
    def name(self) -> str:
        """``namespace/index``, for logs."""
        return f"{self.namespace}/{self.index}"

    # ------------------------------------------------------------ lease

    def release(self, backend: RedisBackend, owner: str) -> bool:
        """Drop our lease (never another pool's)."""
        args = ["release", owner, 0]
        return bool(
            backend.run_script("drain_lease", [self.lease], args, what="drain lease release")
        )

    # ------------------------------------------------------------ stream

    def ensure_group(self, backend: RedisBackend) -> None:
        """Create the consumer group (and the stream) if missing: :func:`ensure_groups`."""
        ensure_groups(backend, [self])

    def claim_pending(
        self, backend: RedisBackend, consumer: str, *, min_idle: float, count: int
    ) -> list[Entry]:
        """Claim up to ``count`` entries other consumers left unacknowledged.

        Entries idle for at least ``min_idle`` seconds move to ``consumer``; their delivery
        count goes up by one. Entries deleted meanwhile are acknowledged and skipped.
        """
        idle_ms = max(int(min_idle * 1000), 0)
        with backend.commands("drain claim") as client:
            pending: Any = client.xpending_range(
                self.stream, GROUP, "-", "+", count, idle=idle_ms or None
            )
            if not pending:
                return []
            deliveries = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
            claimed: Any = client.xclaim(self.stream, GROUP, consumer, idle_ms, list(deliveries))
            entries = [
                Entry(_text(sid), fields, deliveries[_text(sid)] + 1)
                for sid, fields in claimed
                if fields is not None
            ]
            gone = set(deliveries) - {e.stream_id for e in entries}
            if gone:
                client.xack(self.stream, GROUP, *gone)
        return entries

    def ack(
        self,
        backend: RedisBackend,
        latest: Mapping[str, str | bytes],
        ids: Sequence[str | bytes],
        *,
        newest: str | bytes | None = None,
        same: bool = False,
    ) -> int:
        """After the store commit: clear dirty marks that still name these writes, XACK
        every entry of the batch, then remove the entries (one script, ``drain_ack.lua``).

        Args:
            backend: The Redis backend.
            latest: Key -> its newest stream id in the batch.
            ids: Every entry of the batch.
            newest: The batch's highest id (found from ``ids`` when None).
            same: ``ids`` are ``latest``'s values in its order (nothing was coalesced):
                they are not sent twice.
        """
        if not ids:
            return 0
        if newest is None:
            newest = max(ids, key=lambda sid: id_order(_text(sid)))
        keys = "".join(latest).encode("utf-8")
        sep = _separator(keys)
        args: list[Any] = [GROUP, sep or b"", _bytes(newest)]
        if sep is not None:
            # One argument per list: packing 3 arguments per record costs the client more
            # than the whole script costs Redis.
            text = sep.decode("latin-1")
            args.append((text.join(latest) + text).encode("utf-8") if latest else b"")
            args.append(_joined(latest.values(), sep))
            args.append(b"" if same else _joined(ids, sep))
        else:  # every control byte occurs in some key: one argument per item
            args.append(len(latest))
            args += latest
            args += latest.values()
            args += ids
        return int(
            backend.run_script("drain_ack", [self.stream, self.dirty], args, what="drain ack")
        )


def ensure_groups(backend: RedisBackend, partitions: Sequence[Partition]) -> None:
    """Create each partition's consumer group (and stream) if missing, in one pipeline.

    taskguard never deletes a stream. So a group this pool saw before that is missing now
    means the stream went, with the records queued in it and not yet written: Redis lost
    its data (``FLUSHDB``, a restart without persistence, an eviction) or the key was
    deleted. That loss is logged as an error here, where it is found.
    """
    if not partitions:
        return
    with backend.commands("drain XGROUP CREATE") as client:
        pipe = client.pipeline(transaction=False)
        for partition in partitions:
            pipe.xgroup_create(partition.stream, GROUP, id="0", mkstream=True)
        replies = pipe.execute(raise_on_error=False)
        for reply in replies:  # raised here, the port maps it (BackendError, with its cause)
            if isinstance(reply, Exception) and not (
                isinstance(reply, redis.ResponseError) and "BUSYGROUP" in str(reply)
            ):
                raise reply
    for partition, reply in zip(partitions, replies, strict=True):
        if not isinstance(reply, Exception) and partition.had_group:
            logging.getLogger("taskguard.drain").error(
                "drain: the write-behind stream of %s vanished with its consumer group: "
                "records queued there and not yet written are lost (Redis lost its data: "
                "FLUSHDB, a restart without persistence, an eviction; or the key was "
                "deleted)",
                partition.name,
            )
        partition.had_group = True


def with_pending(backend: RedisBackend, partitions: Sequence[Partition]) -> list[Partition]:
    """The ``partitions`` whose consumer group has entries pending (delivered, not yet
    acknowledged), from one pipeline of ``XPENDING`` summaries."""
    if not partitions:
        return []
    with backend.commands("drain pending") as client:
        pipe = client.pipeline(transaction=False)
        for partition in partitions:
            pipe.execute_command("XPENDING", partition.stream, GROUP)  # type: ignore[no-untyped-call]
        replies = pipe.execute()
    return [p for p, summary in zip(partitions, replies, strict=True) if _pending(summary)]


def _pending(summary: Any) -> int:
    """The count of an ``XPENDING`` summary (a list, or a dict once parsed by redis-py)."""
    found = summary.get("pending", 0) if isinstance(summary, dict) else summary[0]
    return int(found or 0)


def read_new(
    backend: RedisBackend,
    consumer: str,
    partitions: Sequence[Partition],
    *,
    count: int,
    block: float | None,
) -> dict[Partition, list[RawEntry]]:
    """New entries of ``partitions``, waiting up to ``block`` seconds when there are none.

    A pipeline of non-blocking XREADGROUP calls (one per partition: each stream has its
    own hash tag) reads what is there; only when that finds nothing does one blocking
    XREADGROUP over every partition wait for the next write. ``block`` must be shorter
    than the backend's :attr:`~taskguard.backend.redis.RedisBackend.socket_timeout`.

    On Redis Cluster the partitions' streams live in different slots, and one command
    reads one slot: the blocking read then waits on the partitions of one slot (in turn)
    for at most :data:`CLUSTER_BLOCK` seconds, so a write to another slot waits that long
    at most before the next pipelined read finds it.
    """
    with backend.commands("drain read") as client:
        if backend.topology == "cluster":
            replies = read_on_masters(
                client, consumer, partitions, count, group=GROUP, raw_name=_XREADGROUP
            )
        else:
            pipe = client.pipeline(transaction=False)
            for p in partitions:
                pipe.execute_command(  # type: ignore[no-untyped-call]
                    _XREADGROUP, "GROUP", GROUP, consumer, "COUNT", count, "STREAMS", p.stream, ">"
                )
            replies = pipe.execute()
    result: dict[Partition, list[RawEntry]] = {}
    for p, found in zip(partitions, replies, strict=True):
        new = _raw_entries(found)
        if new:
            result[p] = new
    if result or not block:
        return result
    if backend.topology == "cluster":
        partitions, block = _one_slot(partitions), min(block, CLUSTER_BLOCK)
    by_stream = {p.stream: p for p in partitions}
    with backend.commands("drain XREADGROUP") as client:
        reply: Any = client.xreadgroup(
            GROUP,
            consumer,
            dict.fromkeys(by_stream, ">"),
            count=count,
            block=max(int(block * 1000), 1),
        )
    for stream, items in reply or []:
        entries: list[RawEntry] = [
            (_bytes(sid), [part for pair in fields.items() for part in pair])
            for sid, fields in items
            if fields is not None
        ]
        if entries:
            result[by_stream[_text(stream)]] = entries
    return result


#: XREADGROUP named by bytes: redis-py has no response callback under that name, so the
#: reply stays as Redis sends it (plain arrays: no dict, no tuple per entry). Reading
#: through a script did the same at about 5 us of Redis CPU per entry, converting the
#: reply to Lua tables and back.
_XREADGROUP = b"XREADGROUP"


def _raw_entries(reply: Any) -> list[RawEntry]:
    """The entries of a one-stream XREADGROUP reply, as RESP2 (``[[stream, entries]]``) or
    RESP3 (``{stream: entries}``) sends it; also accepts redis-py's parsed form."""
    if not reply:
        return []
    streams = list(reply.values()) if isinstance(reply, dict) else [item[1] for item in reply]
    entries: list[Any] = streams[0] if len(streams) == 1 else [e for s in streams for e in s]
    if entries and not isinstance(entries[0][1], list):  # parsed: dict fields, or None
        return [
            (_bytes(sid), [part for pair in fields.items() for part in pair])
            for sid, fields in entries
            if fields is not None
        ]
    return entries


#: The longest a drain thread on Redis Cluster blocks on one slot's partitions.
CLUSTER_BLOCK = 0.05
_turn = itertools.count()


def _one_slot(partitions: Sequence[Partition]) -> list[Partition]:
    """The partitions of one slot among ``partitions``, a different slot each call."""
    by_slot: dict[int, list[Partition]] = {}
    for partition in partitions:
        by_slot.setdefault(key_slot(partition.stream.encode()), []).append(partition)
    slots = sorted(by_slot)
    return by_slot[slots[next(_turn) % len(slots)]]


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


#: Candidate list separators for ``drain_ack.lua``: control bytes, which keys rarely hold.
_SEPARATORS = [bytes([n]) for n in range(32)]


def _separator(text: bytes) -> bytes | None:
    """A byte absent from ``text`` (stream ids never hold one), or None."""
    for sep in _SEPARATORS:
        if sep not in text:
            return sep
    return None


def _joined(items: Iterable[str | bytes], sep: bytes) -> bytes:
    """``items`` (stream ids), each followed by ``sep``, as one argument."""
    parts = list(items)
    if not parts:
        return b""
    try:
        return sep.join(parts) + sep  # type: ignore[arg-type]  # all bytes (as read)
    except TypeError:
        text = sep.decode("latin-1")
        return (text.join(map(_text, parts)) + text).encode()


def dead_letter(
    backend: RedisBackend, partition: Partition, rejected: Sequence[Rejected], now_ms: int
) -> None:
    """Copy ``rejected`` entries to the namespace's dead-letter stream (before their ack).

    Fields: ``k``, ``v``, ``d``, ``c`` as queued, ``V`` (the version), ``p`` (partition),
    ``id`` (the original stream id), ``error``, ``attempts`` (deliveries) and ``at`` (ms).
    """
    entries: list[dict[Any, Any]] = []
    for item in rejected:
        fields: dict[Any, Any] = {
            name: value
            for name, value in item.entry.fields.items()
            if _text(name) in ("k", "v", "d", "c")
        }
        version = item.version
        if version is None:
            try:
                version = int(item.entry.fields[b"V"])
            except (KeyError, ValueError):
                version = version_of(item.entry.stream_id)
        fields.update(
            V=version,
            p=partition.index,
            id=item.entry.stream_id,
            error=item.error[:2000],
            attempts=item.entry.deliveries,
            at=now_ms,
        )
        entries.append(fields)
    with backend.commands("drain dead-letter") as client:
        pipe = client.pipeline(transaction=False)
        for fields in entries:
            pipe.xadd(partition.dead_letters, fields)
        pipe.execute()
