"""One drain batch: coalescing stream entries into records, and bisecting out poison.

Pure logic, no Redis: the pool reads the entries, this module decides what to write, and
:func:`write_bisecting` finds the records a store refuses for good.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from taskguard.cache.codec import get_codec
from taskguard.cache.records import QueuedWrite
from taskguard.errors import StoreError
from taskguard.sinks.base import Record

__all__ = ["Coalesced", "Entry", "Rejected", "coalesce", "id_order", "write_bisecting"]


@dataclass(frozen=True)
class Entry:
    """A stream entry as read: its id, raw fields, and how often it was delivered."""

    stream_id: str
    fields: Mapping[bytes, bytes]
    deliveries: int = 1


@dataclass(frozen=True)
class Rejected:
    """An entry that goes to the dead letters, and why."""

    entry: Entry
    error: str
    version: int | None = None


@dataclass
class Coalesced:
    """What a batch writes.

    Attributes:
        records: One record per key: the highest version that decodes.
        winners: Key -> the entry its record came from.
        latest: Key -> the newest stream id of the key in the batch (the dirty index can
            only point at that one).
        rejected: Entries that cannot be decoded.
    """

    records: list[Record] = field(default_factory=list)
    winners: dict[str, Entry] = field(default_factory=dict)
    latest: dict[str, str] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)


def id_order(stream_id: str) -> tuple[int, int]:
    """A stream id as a sortable ``(ms, seq)``."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def coalesce(entries: Sequence[Entry]) -> Coalesced:
    """Reduce ``entries`` to one record per key; the highest version wins.

    A version is the entry's stream id, or its explicit ``V`` (a re-queued dead letter keeps
    its original version, so it never overwrites a newer write). A winner that cannot be
    decoded is rejected and the next highest version of its key is tried.
    """
    result = Coalesced()
    candidates: dict[str, list[tuple[QueuedWrite, Entry]]] = {}
    for entry in entries:
        try:
            write = QueuedWrite.from_entry(entry.stream_id, dict(entry.fields))
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            result.rejected.append(Rejected(entry, f"malformed entry: {exc!r}"))
            continue
        candidates.setdefault(write.key, []).append((write, entry))
        newest = result.latest.get(write.key)
        if newest is None or id_order(entry.stream_id) > id_order(newest):
            result.latest[write.key] = entry.stream_id
    for key, writes in candidates.items():
        writes.sort(key=lambda we: (we[0].version, id_order(we[0].stream_id)), reverse=True)
        for write, entry in writes:
            try:
                value = None
                if not write.deleted:
                    if write.payload is None:
                        raise ValueError("no value field 'v'")
                    value = get_codec(write.codec).loads(write.payload)
            except Exception as exc:  # any codec failure makes the entry undecodable
                result.rejected.append(
                    Rejected(entry, f"undecodable payload: {exc!r}", write.version)
                )
                continue
            result.records.append(Record(key, value, write.version, write.deleted))
            result.winners[key] = entry
            break
    return result


def write_bisecting(
    write: Callable[[Sequence[Record]], None], records: Sequence[Record]
) -> list[tuple[Record, str]]:
    """Write ``records``, splitting the batch in halves around permanent failures.

    ``write`` raises :class:`StoreError` with ``transient=False`` (or any other exception,
    which counts as permanent too) when the store refuses the data; it handles transient
    errors itself. A failing batch is written as two halves, recursively, so the good
    records of a batch with one poison record take about ``2*log2(n)`` extra writes.

    Returns:
        The records refused on their own, each with the error text.
    """
    poisoned: list[tuple[Record, str]] = []
    stack = [list(records)] if records else []
    while stack:
        part = stack.pop()
        try:
            write(part)
        except StoreError as exc:
            if exc.transient:
                raise
            _split(part, exc, stack, poisoned)
        except Exception as exc:
            _split(part, exc, stack, poisoned)
    return poisoned


def _split(
    part: list[Record],
    exc: Exception,
    stack: list[list[Record]],
    poisoned: list[tuple[Record, str]],
) -> None:
    if len(part) == 1:
        poisoned.append((part[0], f"{type(exc).__name__}: {exc}"))
        return
    middle = len(part) // 2
    stack.append(part[middle:])
    stack.append(part[:middle])
