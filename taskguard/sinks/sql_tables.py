"""The tables a :class:`~taskguard.sinks.sql.SQLStore` writes: the generic key-value table
and a user's own table described by a :class:`TableMapping`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    false,
    func,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.schema import CreateTable

from taskguard.errors import ConfigurationError

__all__ = ["DEFAULT_TABLE", "DIALECTS", "TableMapping", "ddl", "kv_table"]

#: The generic table's default name.
DEFAULT_TABLE = "taskguard_kv"

#: The dialects a store supports, by name.
DIALECTS: Mapping[str, Dialect] = MappingProxyType(
    {"postgresql": postgresql.dialect(), "sqlite": sqlite.dialect()}  # type: ignore[no-untyped-call]
)


def kv_table(name: str = DEFAULT_TABLE, schema: str | None = None) -> Table:
    """The generic key-value table (not bound to a database).

    Columns: ``namespace``, ``key`` (the primary key), ``value`` (``jsonb`` on PostgreSQL,
    JSON text on SQLite; ``NULL`` for a tombstone), ``version``, ``deleted`` and
    ``updated_at`` (set by the database on every applied write).

    Args:
        name: The table name.
        schema: The schema (PostgreSQL) or attached database (SQLite), if not the default.

    Returns:
        The table.
    """
    return Table(
        name,
        MetaData(),
        Column("namespace", Text, nullable=False),
        Column("key", Text, nullable=False),
        Column("value", Text().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
        Column("version", BigInteger, nullable=False),
        Column("deleted", Boolean, nullable=False, server_default=false()),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        PrimaryKeyConstraint("namespace", "key", name=f"{name}_pkey"),
        schema=schema,
    )


def ddl(dialect: str, table: str = DEFAULT_TABLE, schema: str | None = None) -> str:
    """The ``CREATE TABLE`` statement of the generic table, for a migration.

    Args:
        dialect: ``"postgresql"`` or ``"sqlite"``.
        table: The table name.
        schema: The schema, if not the default.

    Returns:
        The SQL text, ending with ``;``.

    Example:
        >>> print(ddl("sqlite", "kv").splitlines()[0])
        CREATE TABLE IF NOT EXISTS kv (
    """
    try:
        compiled_for = DIALECTS[dialect]
    except KeyError:
        raise ConfigurationError(
            f"unknown dialect {dialect!r}: use one of {', '.join(DIALECTS)}", field="dialect"
        ) from None
    statement = CreateTable(kv_table(table, schema), if_not_exists=True)
    text = str(statement.compile(dialect=compiled_for)).strip().replace("\t", "    ")
    return "\n".join(line.rstrip() for line in text.splitlines()) + ";"


@dataclass(frozen=True)
class TableMapping:
    """Store records in your own table, one column per field of the record's value.

    The record's value must be a dict. Its fields go to the columns named by
    ``columns`` (field -> column); with ``columns=None`` every key of the value names a
    column itself. A write sets the columns of the fields the value has: on insert the
    others take their defaults, on update they keep their values. Fields that
    ``columns`` does not name are not stored.

    The table needs a unique index on ``key_column`` (or on ``namespace_column,
    key_column``), a ``BIGINT`` version column, and, unless ``deleted_column`` is
    ``None``, a boolean deleted column. It is never created or dropped by taskguard.

    Args:
        table: The table name (in the store's ``schema``).
        key_column: The column holding the record key.
        columns: Field -> column; ``None`` for "the value's keys are column names".
        version_column: The column holding the version (the versioned-upsert guard).
        deleted_column: The column flagging a tombstone. A delete sets it (and the
            version), leaving the other columns as they were. ``None``: a delete is a
            real ``DELETE ... WHERE version < :version``; then nothing remembers the
            delete, and an older write re-delivered later inserts the row again.
        namespace_column: The column holding the namespace; ``None`` when the table
            serves a single namespace (the namespace passed to ``write`` is ignored).
    """

    table: str
    key_column: str
    columns: Mapping[str, str] | None = None
    version_column: str = "version"
    deleted_column: str | None = "deleted"
    namespace_column: str | None = None

    def __post_init__(self) -> None:
        if not self.table:
            raise ConfigurationError("a TableMapping needs a table name", field="table")
        control = [self.key_column, self.version_column]
        control += [c for c in (self.deleted_column, self.namespace_column) if c]
        if len(set(control)) != len(control):
            raise ConfigurationError(
                f"key, version, deleted and namespace columns must differ: {control}",
                field="columns",
            )
        if self.columns is not None:
            clash = sorted(set(self.columns.values()) & set(control))
            if clash:
                raise ConfigurationError(
                    f"fields cannot be mapped to the control columns {clash}", field="columns"
                )
            object.__setattr__(self, "columns", MappingProxyType(dict(self.columns)))

    @property
    def control_columns(self) -> frozenset[str]:
        """The key, version, deleted and namespace columns."""
        names = {self.key_column, self.version_column, self.deleted_column}
        names.add(self.namespace_column)
        return frozenset(name for name in names if name)

    def field_columns(self, table: Table) -> dict[str, str]:
        """Field -> column for ``table`` (the reflected table): every column but the
        control columns when ``columns`` is ``None``.

        Raises:
            ConfigurationError: A mapped or control column is not in the table.
        """
        present = set(table.c.keys())
        missing = sorted(self.control_columns - present)
        if self.columns is not None:
            missing += sorted(set(self.columns.values()) - present)
            mapped = dict(self.columns)
        else:
            names = [column.key for column in table.columns]
            mapped = {name: name for name in names if name not in self.control_columns}
        if missing:
            raise ConfigurationError(
                f"table {table.fullname!r} has no column(s) {missing}", field="mapping"
            )
        return mapped
