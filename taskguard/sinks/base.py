"""The store protocol: where the cache's values live for good (a database).

A store keeps one row per (namespace, key) with the value, its version and a deleted
flag. Every write is a *versioned upsert*: a row is replaced only by a record with a higher
version, and a delete is a tombstone (``deleted=True``) that also carries a version. So
writing the same records twice, or an old record after a new one, leaves the same final
state: the drain pool's at-least-once delivery becomes an exact final state.

Versions are integers that order writes to one key. Write-behind records take theirs from
the Redis stream id (:func:`taskguard.cache.records.version_of`); direct writes take
:func:`taskguard.cache.records.local_version`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, overload, runtime_checkable

__all__ = [
    "CheckedStore",
    "JSONBatch",
    "JSONText",
    "Loaded",
    "Record",
    "Store",
    "accepts_json_text",
    "check_record",
]


class JSONText(str):
    """A record value that is already compact JSON text (the drain's write-behind payloads).

    The drain pool hands these, undecoded, only to a store whose ``accepts_json_text``
    attribute is true (:func:`accepts_json_text`); such a store writes the text as the
    value's JSON verbatim and must refuse text that is not valid JSON with a non-transient
    :class:`~taskguard.errors.StoreError` (the record is then dead-lettered, as an
    undecodable payload would be). Every other store gets decoded values.
    """

    __slots__ = ()


class JSONBatch(Sequence["Record"]):
    """Records of distinct keys, each a JSON text value, held as three columns.

    The drain pool's common batch (every record a JSON set of another key). It is a
    sequence of :class:`Record` (values are :class:`JSONText`), built one at a time only
    when asked for; a store that knows this class writes the columns directly (the SQL
    store's COPY path). Only given to stores that accept JSON text.

    Args:
        keys: The keys, all different.
        texts: Each key's value as UTF-8 JSON text.
        versions: Each key's version.
    """

    __slots__ = ("keys", "texts", "versions")

    def __init__(self, keys: list[str], texts: list[bytes], versions: list[int]) -> None:
        if not len(keys) == len(texts) == len(versions):
            raise ValueError("keys, texts and versions must have the same length")
        self.keys = keys
        self.texts = texts
        self.versions = versions

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> JSONBatch: ...

    def __getitem__(self, index: int | slice) -> Record | JSONBatch:
        if isinstance(index, slice):
            return JSONBatch(self.keys[index], self.texts[index], self.versions[index])
        return Record(self.keys[index], JSONText(self.texts[index], "utf-8"), self.versions[index])

    def __iter__(self) -> Iterator[Record]:
        for key, text, version in zip(self.keys, self.texts, self.versions, strict=True):
            yield Record(key, JSONText(text, "utf-8"), version)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"JSONBatch({list(self)!r})"


def accepts_json_text(store: object) -> bool:
    """Whether ``store`` takes :class:`JSONText` values (its ``accepts_json_text`` is true)."""
    return getattr(store, "accepts_json_text", False) is True


@dataclass(frozen=True)
class Record:
    """One write for a store.

    Attributes:
        key: The cache key (unique within a namespace).
        value: A JSON-serializable value; ``None`` for a delete. A :class:`JSONText` is
            the value's JSON text (only for stores that accept it).
        version: Orders writes to ``key``; a higher version wins.
        deleted: True for a tombstone (the key was deleted).
    """

    key: str
    value: Any
    version: int
    deleted: bool = False


@dataclass(frozen=True)
class Loaded:
    """A row read back from a store.

    Attributes:
        value: The stored value (``None`` when ``deleted``).
        version: The version that wrote it.
        deleted: True when the newest write was a delete (a tombstone).
    """

    value: Any
    version: int
    deleted: bool = False


@runtime_checkable
class Store(Protocol):
    """What the cache and the drain pool need from a database.

    Implementations: :class:`taskguard.sinks.sql.SQLStore` (PostgreSQL, SQLite).
    Every method may raise :class:`taskguard.errors.StoreError`; its ``transient`` flag
    tells the drain pool whether to retry the batch or bisect it for poison records.

    A store may also say up front what it can never hold, with a ``check(namespace,
    record)`` method (:class:`CheckedStore`): the cache calls it in ``set()`` and
    ``delete()``, before anything is written or queued, so a value the database would
    refuse is refused to the caller rather than dead-lettered later. A store without one
    accepts everything up front (:func:`check_record`).
    """

    def write(self, namespace: str, records: Sequence[Record]) -> None:
        """Apply ``records`` in ONE transaction, each as a versioned upsert.

        ``records`` has at most one record per key (the caller coalesces). Records whose
        version is not higher than the stored row's are skipped, not errors.
        """
        ...

    def load(self, namespace: str, key: str) -> Loaded | None:
        """The row of ``key``, a tombstone included; ``None`` if never written."""
        ...

    def load_many(self, namespace: str, keys: Sequence[str]) -> Mapping[str, Loaded]:
        """The rows of ``keys`` that exist (tombstones included), by key."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class CheckedStore(Protocol):
    """A store that can refuse a record up front (the optional part of :class:`Store`)."""

    def check(self, namespace: str, record: Record) -> None:
        """Raise :class:`~taskguard.errors.UnstorableValue` if ``record`` could never be
        written to ``namespace`` (whatever the database's state): a value it cannot
        represent, a key it cannot index. Must not touch the database: it runs on every
        cache write."""
        ...


def check_record(store: object, namespace: str, record: Record) -> None:
    """``store.check(namespace, record)`` if the store has a ``check`` method.

    Raises:
        UnstorableValue: The store can never hold ``record``.
    """
    check = getattr(store, "check", None)  # not isinstance(): this runs on every write
    if check is not None:
        check(namespace, record)
