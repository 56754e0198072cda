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

__all__ = ["STAGE_TABLE", "copy_merge", "merge_statement"]

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
    conn: Connection, table: Table, namespace: str, rows: Sequence[tuple[Any, ...]]
) -> None:
    """Apply ``rows`` (key, JSON text or None, version, deleted) inside ``conn``'s
    transaction: COPY them into the stage, then merge the stage into ``table``.

    Args:
        conn: A SQLAlchemy connection of the ``postgresql+psycopg`` dialect, in a
            transaction.
        table: The generic key-value table.
        namespace: The namespace of every row.
        rows: The rows, at most one per key.
    """
    raw = conn.connection.driver_connection
    if raw is None:  # pragma: no cover - a checked-out connection always has one
        raise RuntimeError("the connection has no driver connection")
    with raw.cursor() as cursor:
        cursor.execute(_CREATE_STAGE)
        with cursor.copy(_COPY) as copy:
            for row in rows:
                copy.write_row(row)
    conn.execute(merge_statement(table, namespace))
