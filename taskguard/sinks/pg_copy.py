"""PostgreSQL fast path for big batches: COPY into a temporary table, then one merge.

``executemany`` sends one ``INSERT ... ON CONFLICT`` per row (pipelined by psycopg 3);
for a big batch it is faster to stream the rows with ``COPY`` into a per-connection
temporary table and apply them with a single ``INSERT ... SELECT ... ON CONFLICT ... DO
UPDATE ... WHERE version < excluded.version``. The temporary table is created once per
connection (``ON COMMIT DELETE ROWS`` empties it at every commit, a rollback discards
the rows), so the whole write stays one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    MetaData,
    Table,
    Text,
    cast,
    func,
    literal,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import Insert

from .base import JSONBatch

__all__ = [
    "STAGE_TABLE",
    "copy_batch",
    "copy_merge",
    "copy_text",
    "escape_copy",
    "merge_statement",
]

#: The temporary table the rows are copied into (schema ``pg_temp``: per connection).
STAGE_TABLE = "taskguard_stage"

_CREATE_STAGE = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGE_TABLE} "
    "(key text NOT NULL, value text, version bigint NOT NULL, deleted boolean NOT NULL) "
    "ON COMMIT DELETE ROWS"
)
_COPY = f"COPY pg_temp.{STAGE_TABLE} (key, value, version, deleted) FROM STDIN"

_stage = Table(
    STAGE_TABLE,
    MetaData(),
    Column("key", Text),
    Column("value", Text),
    Column("version", BigInteger),
    Column("deleted", Boolean),
    schema="pg_temp",
)


# Separators used while the rows are joined, before escaping. They are checked to be absent
# from the data (by counting them); otherwise the rows are escaped field by field.
_COLUMN = "\x00"
_ROW = "\x01"
_NULL = "\x02"
_NULL_FIELD = "\\N"


def escape_copy(text: str) -> str:
    """``text`` as a field of COPY's text format: backslash, tab, newline and carriage
    return become ``\\\\``, ``\\t``, ``\\n`` and ``\\r``."""
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\t" in text:
        text = text.replace("\t", "\\t")
    if "\n" in text:
        text = text.replace("\n", "\\n")
    if "\r" in text:
        text = text.replace("\r", "\\r")
    return text


def copy_text(rows: Sequence[tuple[str, str | None, int, bool]]) -> str:
    """``rows`` (key, JSON text or None, version, deleted) as COPY text-format data.

    The rows are joined with placeholder separators and escaped in one pass over the
    whole text (a few C-level scans instead of Python work per field); when a key or
    value holds a placeholder character, each field is escaped on its own instead.
    """
    nulls = 0
    parts: list[str] = []
    for key, value, version, deleted in rows:
        if value is None:
            nulls += 1
        field = _NULL if value is None else value
        parts.append(f"{key}{_COLUMN}{field}{_COLUMN}{version:d}{_COLUMN}{'t' if deleted else 'f'}")
    joined = _ROW.join(parts)
    n = len(parts)
    if (
        joined.count(_COLUMN) == 3 * n
        and joined.count(_ROW) == max(n - 1, 0)
        and joined.count(_NULL) == nulls
    ):
        text = escape_copy(joined)
        text = text.replace(_COLUMN, "\t").replace(_ROW, "\n").replace(_NULL, "\\N")
        return text + "\n" if n else ""
    return "".join(
        f"{escape_copy(key)}\t{_NULL_FIELD if value is None else escape_copy(value)}\t"
        f"{version:d}\t{'t' if deleted else 'f'}\n"
        for key, value, version, deleted in rows
    )


def copy_batch(batch: JSONBatch) -> bytes:
    """A :class:`~taskguard.sinks.base.JSONBatch` as COPY text-format data (bytes).

    The JSON texts go out as they came from Redis, never decoded. When no key or text
    holds a tab, newline or carriage return (JSON text never does, and keys rarely),
    the rows are formatted as they are and backslashes doubled in one pass over the
    whole data; otherwise every field is escaped on its own.
    """
    n = len(batch.keys)
    if n == 0:
        return b""
    keys = "\n".join(batch.keys)
    texts = batch.texts
    joined = b"".join(texts)
    if (
        keys.count("\n") == n - 1
        and "\t" not in keys
        and "\r" not in keys
        and b"\t" not in joined
        and b"\n" not in joined
        and b"\r" not in joined
    ):
        rows = zip(keys.encode("utf-8").split(b"\n"), texts, batch.versions, strict=True)
        data = b"".join([b"%s\t%s\t%d\tf\n" % row for row in rows])
        return data.replace(b"\\", b"\\\\") if b"\\" in data else data
    return copy_text(
        [
            (key, text.decode("utf-8"), version, False)
            for key, text, version in zip(batch.keys, texts, batch.versions, strict=True)
        ]
    ).encode("utf-8")


def merge_statement(table: Table, namespace: str) -> Insert:
    """``INSERT INTO table SELECT ... FROM the stage ON CONFLICT ... WHERE newer``.

    Rows are taken in key order so concurrent merges lock rows in the same order.
    """
    rows = select(
        literal(namespace, Text),
        _stage.c.key,
        cast(_stage.c.value, JSONB),
        _stage.c.version,
        _stage.c.deleted,
    ).order_by(_stage.c.key)
    insert = pg_insert(table).from_select(["namespace", "key", "value", "version", "deleted"], rows)
    return insert.on_conflict_do_update(
        index_elements=[table.c.namespace, table.c.key],
        set_={
            "value": insert.excluded.value,
            "version": insert.excluded.version,
            "deleted": insert.excluded.deleted,
            "updated_at": func.now(),
        },
        where=table.c.version < insert.excluded.version,
    )


def copy_merge(
    conn: Connection, table: Table, namespace: str, rows: Sequence[tuple[Any, ...]] | bytes
) -> None:
    """Apply ``rows`` (key, JSON text or None, version, deleted) inside ``conn``'s
    transaction: COPY them into the stage, then merge the stage into ``table``.

    Args:
        conn: A SQLAlchemy connection of the ``postgresql+psycopg`` dialect, in a
            transaction.
        table: The generic key-value table.
        namespace: The namespace of every row.
        rows: The rows, at most one per key; or COPY data already (:func:`copy_batch`).
    """
    raw = conn.connection.driver_connection
    if raw is None:  # pragma: no cover - a checked-out connection always has one
        raise RuntimeError("the connection has no driver connection")
    with raw.cursor() as cursor:
        cursor.execute(_CREATE_STAGE)
        with cursor.copy(_COPY) as copy:
            copy.write(rows if isinstance(rows, bytes) else copy_text(rows))
    conn.execute(merge_statement(table, namespace))
