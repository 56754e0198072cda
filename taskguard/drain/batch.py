"""One drain batch: coalescing stream entries into records, and bisecting out poison.

Pure logic, no Redis: the pool reads the entries, this module decides what to write, and
:func:`write_bisecting` finds the records a store refuses for good.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from taskguard.cache.codec import get_codec
from taskguard.cache.records import VERSION_SCALE, QueuedWrite
from taskguard.errors import StoreError
from taskguard.sinks.base import JSONBatch, JSONText, Record

__all__ = [
    "Coalesced",
    "Entry",
    "RawEntry",
    "Rejected",
    "coalesce",
    "coalesce_raw",
    "entry_of",
    "id_order",
    "write_bisecting",
]

#: A stream entry as the read script returns it: (id, flat field list ``[name, value, ...]``).
RawEntry = tuple[bytes, list[bytes]]


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


def entry_of(raw: RawEntry, deliveries: int = 1) -> Entry:
    """The :class:`Entry` of a raw entry (its fields as a dict)."""
    sid, flat = raw
    return Entry(_text(sid), dict(zip(flat[::2], flat[1::2], strict=True)), deliveries)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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

    records: Sequence[Record] = field(default_factory=list)
    winners: dict[str, Entry] = field(default_factory=dict)
    latest: dict[str, str] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)
    _raw_entries: Sequence[RawEntry] = ()

    def winner(self, key: str) -> Entry:
        """The entry the record of ``key`` came from."""
        entry = self.winners.get(key)
        if entry is None:
            for item in self._raw_entries:
                found = entry_of(item)
                self.winners[found.fields[b"k"].decode()] = found
            entry = self.winners[key]
        return entry


def coalesce_raw(raw: Sequence[RawEntry], *, json_text: bool = False) -> Coalesced:
    """:func:`coalesce` for entries as the read script returns them (delivered once).

    The common batch - every entry a JSON set of a different key - takes a fast path that
    builds no :class:`Entry`: with ``json_text`` the payloads become
    :class:`~taskguard.sinks.base.JSONText` undecoded (the store checks them: a payload
    that is not JSON is refused by the store and dead-lettered through bisection, where
    :func:`coalesce` would reject it itself). Anything else goes through :func:`coalesce`.
    """
    fast = _coalesce_plain(raw, json_text)
    if fast is not None:
        return fast
    return coalesce([entry_of(item) for item in raw], json_text=json_text)


#: The field layout of a queued JSON set, as the read script returns it: (k, key, v, payload,
#: c, "json"). The fast path checks every entry against it in one pass.
_PLAIN_SHAPE = {(6, b"k", b"v", b"c", b"json")}


def _coalesce_plain(raw: Sequence[RawEntry], json_text: bool) -> Coalesced | None:
    """The fast path of :func:`coalesce_raw`, or None when the batch does not fit it.

    Column at a time: one pass checks every entry's shape, the keys are decoded in one
    comprehension, and with ``json_text`` the records are a :class:`JSONBatch` (no
    per-record object until something asks for one).
    """
    try:
        shapes = {(len(f), f[0], f[2], f[4], f[5]) for _, f in raw}
        if shapes != _PLAIN_SHAPE:
            return None
        keys = [f[1].decode() for _, f in raw]
        if len(set(keys)) != len(keys):
            return None  # a key written twice: coalesce() picks the winner
        ids = [sid for sid, _ in raw]
        versions = [_version(sid) for sid in ids]
        payloads = [f[3] for _, f in raw]
        records: Sequence[Record]
        if json_text:
            # Every payload must be UTF-8 (a JSONText is text). The newlines make a
            # character split between two payloads invalid, so one decode checks all.
            b"\n".join(payloads).decode("utf-8")
            records = JSONBatch(keys, payloads, versions)
        else:
            loads = get_codec("json").loads
            records = [
                Record(key, loads(payload), version)
                for key, payload, version in zip(keys, payloads, versions, strict=True)
            ]
        latest = dict(zip(keys, [sid.decode() for sid in ids], strict=True))
    except (ValueError, TypeError, AttributeError, IndexError):
        return None  # undecodable or odd: coalesce() rejects what must be
    return Coalesced(records=records, latest=latest, _raw_entries=raw)


def _version(sid: bytes) -> int:
    ms, _, seq = sid.partition(b"-")
    return int(ms) * VERSION_SCALE + int(seq or 0)


def id_order(stream_id: str) -> tuple[int, int]:
    """A stream id as a sortable ``(ms, seq)``."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def coalesce(entries: Sequence[Entry], *, json_text: bool = False) -> Coalesced:
    """Reduce ``entries`` to one record per key; the highest version wins.

    A version is the entry's stream id, or its explicit ``V`` (a re-queued dead letter keeps
    its original version, so it never overwrites a newer write). A winner that cannot be
    decoded is rejected and the next highest version of its key is tried. With
    ``json_text``, a JSON payload is still checked but handed on as
    :class:`~taskguard.sinks.base.JSONText` (the store writes it verbatim).
    """
    records: list[Record] = []
    result = Coalesced(records=records)
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
                    if json_text and write.codec == "json":
                        value = JSONText(write.payload, "utf-8")
            except Exception as exc:  # any codec failure makes the entry undecodable
                result.rejected.append(
                    Rejected(entry, f"undecodable payload: {exc!r}", write.version)
                )
                continue
            records.append(Record(key, value, write.version, write.deleted))
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
    stack: list[Sequence[Record]] = [records] if records else []
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
    part: Sequence[Record],
    exc: Exception,
    stack: list[Sequence[Record]],
    poisoned: list[tuple[Record, str]],
) -> None:
    if len(part) == 1:
        poisoned.append((part[0], f"{type(exc).__name__}: {exc}"))
        return
    middle = len(part) // 2
    stack.append(part[middle:])
    stack.append(part[:middle])
