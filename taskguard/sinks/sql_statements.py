"""The SQL a :class:`~taskguard.sinks.sql.SQLStore` runs: versioned upserts, tombstones
and loads, for the generic key-value table and for a mapped user table.

Every write is ``INSERT ... ON CONFLICT (<key>) DO UPDATE SET ... WHERE <table>.version <
excluded.version``: a row only ever moves to a higher version, so re-applying a batch, or
applying an older record after a newer one, changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Table, Text, and_, bindparam, cast, delete, false, func, select, true
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.base import Executable

from taskguard.errors import StoreError

from .base import JSONText, Loaded, Record
from .sql_tables import TableMapping

__all__ = ["KVStatements", "MappedStatements", "Step", "encode_value", "latest_per_key"]

#: One statement and its parameter sets (run with executemany).
Step = tuple[Executable, list[dict[str, Any]]]

_LOAD_CHUNK = 500
_BIGINT = range(-(2**63), 2**63)


def latest_per_key(records: Sequence[Record]) -> list[Record]:
    """One record per key (the highest version), sorted by key.

    The store protocol promises one record per key; this makes a slip harmless. Key order
    makes concurrent writers lock rows in the same order (fewer deadlocks).

    Raises:
        StoreError: (not transient) a record has a non-string key or a version that is not
            a 64-bit integer.
    """
    latest: dict[str, Record] = {}
    for record in records:
        if not isinstance(record.key, str):
            raise StoreError(f"record key {record.key!r} is not a string", transient=False)
        version = record.version
        if isinstance(version, bool) or not isinstance(version, int) or version not in _BIGINT:
            raise StoreError(
                f"record {record.key!r}: version {version!r} is not a 64-bit integer",
                transient=False,
            )
        seen = latest.get(record.key)
        if seen is None or seen.version < version:
            latest[record.key] = record
    return [latest[key] for key in sorted(latest)]


def encode_value(record: Record, *, check_text: bool = True) -> str | None:
    """The record's value as compact JSON text (``None`` for a tombstone).

    A :class:`~taskguard.sinks.base.JSONText` value is the JSON already: it is returned
    as is, after a check that it parses (skipped with ``check_text=False``, for a
    database that checks it itself: PostgreSQL's ``jsonb``).

    Raises:
        StoreError: (not transient) the value is not JSON-serializable (NaN included), or
            is JSON text that does not parse.
    """
    if record.deleted:
        return None
    if type(record.value) is JSONText:
        if check_text:
            _check_json(record.key, record.value)
        return record.value
    try:
        return json.dumps(record.value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"record {record.key!r}: value is not JSON-serializable: {exc}", transient=False
        ) from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_json(key: str, text: str) -> None:
    """Raise a non-transient StoreError unless ``text`` is strict JSON (no NaN/Infinity)."""
    try:
        json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise StoreError(
            f"record {key!r}: value is not valid JSON text: {exc}", transient=False
        ) from exc


def _upsert(
    table: Table,
    dialect: str,
    values: Mapping[str, Any],
    *,
    conflict: Sequence[str],
    update: Sequence[str],
    version: str,
    extra: Mapping[str, Any] | None = None,
) -> Executable:
    """``INSERT values ON CONFLICT (conflict) DO UPDATE SET update... WHERE newer``."""
    insert = (pg_insert if dialect == "postgresql" else sqlite_insert)(table).values(dict(values))
    set_: dict[str, Any] = {name: insert.excluded[name] for name in update}
    set_.update(extra or {})
    return insert.on_conflict_do_update(
        index_elements=[table.c[name] for name in conflict],
        set_=set_,
        where=table.c[version] < insert.excluded[version],
    )


def _chunks(keys: Sequence[str]) -> Iterator[list[str]]:
    unique = list(dict.fromkeys(keys))
    for start in range(0, len(unique), _LOAD_CHUNK):
        yield unique[start : start + _LOAD_CHUNK]


class KVStatements:
    """Statements for the generic table (namespace, key, value, version, deleted)."""

    def __init__(self, table: Table, dialect: str) -> None:
        self.table = table
        self.dialect = dialect
        value = bindparam("p_value", type_=Text)
        self._upsert = _upsert(
            table,
            dialect,
            {
                "namespace": bindparam("p_ns", type_=Text),
                "key": bindparam("p_key", type_=Text),
                "value": cast(value, JSONB) if dialect == "postgresql" else value,
                "version": bindparam("p_version"),
                "deleted": bindparam("p_deleted"),
            },
            conflict=("namespace", "key"),
            update=("value", "version", "deleted"),
            version="version",
            extra={"updated_at": func.now()},
        )
        # The store owns the JSON: read jsonb back as text and decode it here.
        self._value = cast(table.c.value, Text) if dialect == "postgresql" else table.c.value

    def rows(self, records: Sequence[Record]) -> list[tuple[str, str | None, int, bool]]:
        """(key, JSON text, version, deleted) per record; the records come from
        :func:`latest_per_key`. JSON text values are checked here on SQLite only
        (PostgreSQL's ``jsonb`` cast refuses bad JSON itself)."""
        check = self.dialect != "postgresql"
        return [
            (r.key, encode_value(r, check_text=check), r.version, bool(r.deleted)) for r in records
        ]

    def steps(self, namespace: str, records: Sequence[Record]) -> list[Step]:
        """The executemany upsert of ``records``."""
        params = [
            {"p_ns": namespace, "p_key": k, "p_value": v, "p_version": ver, "p_deleted": d}
            for k, v, ver, d in self.rows(records)
        ]
        return [(self._upsert, params)]

    def load(self, conn: Connection, namespace: str, keys: Sequence[str]) -> dict[str, Loaded]:
        """The rows of ``keys`` that exist, tombstones included."""
        table = self.table
        found: dict[str, Loaded] = {}
        for chunk in _chunks(keys):
            query = select(table.c.key, self._value, table.c.version, table.c.deleted).where(
                table.c.namespace == namespace, table.c.key.in_(chunk)
            )
            for key, text, version, deleted in conn.execute(query):
                value = None if text is None else json.loads(text)
                found[key] = Loaded(value=value, version=version, deleted=bool(deleted))
        return found


class MappedStatements:
    """Statements for a user table described by a :class:`TableMapping`."""

    def __init__(self, table: Table, mapping: TableMapping, dialect: str) -> None:
        self.table = table
        self.mapping = mapping
        self.dialect = dialect
        self.fields = mapping.field_columns(table)  # field -> column
        self._statements: dict[tuple[str, ...], Executable] = {}
        ns = [mapping.namespace_column] if mapping.namespace_column else []
        self._conflict = (*ns, mapping.key_column)

    def _base(self, namespace: str, record: Record) -> dict[str, Any]:
        params: dict[str, Any] = {"p_key": record.key, "p_version": record.version}
        if self.mapping.namespace_column:
            params["p_ns"] = namespace
        return params

    def _base_values(self) -> dict[str, Any]:
        m, c = self.mapping, self.table.c
        values: dict[str, Any] = {
            m.key_column: bindparam("p_key", type_=c[m.key_column].type),
            m.version_column: bindparam("p_version", type_=c[m.version_column].type),
        }
        if m.namespace_column:
            values[m.namespace_column] = bindparam("p_ns", type_=c[m.namespace_column].type)
        return values

    def _statement(self, columns: tuple[str, ...]) -> Executable:
        """The upsert setting ``columns`` (cached per column set)."""
        statement = self._statements.get(columns)
        if statement is None:
            m, c = self.mapping, self.table.c
            values = self._base_values()
            for index, column in enumerate(columns):
                values[column] = bindparam(f"tg_bind_{index}", type_=c[column].type)
            update = [*columns, m.version_column]
            if m.deleted_column:
                values[m.deleted_column] = false()
                update.append(m.deleted_column)
            statement = _upsert(
                self.table,
                self.dialect,
                values,
                conflict=self._conflict,
                update=update,
                version=m.version_column,
            )
            self._statements[columns] = statement
        return statement

    def _tombstone(self) -> Executable:
        m, c = self.mapping, self.table.c
        if m.deleted_column is None:
            where: list[ColumnElement[bool]] = [
                c[m.key_column] == bindparam("p_key"),
                c[m.version_column] < bindparam("p_version"),
            ]
            if m.namespace_column:
                where.append(c[m.namespace_column] == bindparam("p_ns"))
            return delete(self.table).where(and_(*where))
        values = {**self._base_values(), m.deleted_column: true()}
        update = (m.version_column, m.deleted_column)
        return _upsert(
            self.table,
            self.dialect,
            values,
            conflict=self._conflict,
            update=update,
            version=m.version_column,
        )

    def _columns_of(self, record: Record) -> dict[str, Any]:
        """Column -> value for a live record's value."""
        value = record.value
        if not isinstance(value, Mapping):
            raise StoreError(
                f"record {record.key!r}: a mapped table needs a dict value, "
                f"not {type(value).__name__}",
                transient=False,
            )
        if self.mapping.columns is None:
            unknown = sorted(str(name) for name in value if name not in self.fields)
            if unknown:
                raise StoreError(
                    f"record {record.key!r}: table {self.table.fullname!r} has no "
                    f"column(s) {unknown}",
                    transient=False,
                )
        return {self.fields[f]: v for f, v in value.items() if f in self.fields}

    def steps(self, namespace: str, records: Sequence[Record]) -> list[Step]:
        """Upserts grouped by the set of columns they set; tombstones (or deletes)."""
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        tombstones: list[dict[str, Any]] = []
        for record in records:
            params = self._base(namespace, record)
            if record.deleted:
                tombstones.append(params)
                continue
            values = self._columns_of(record)
            columns = tuple(sorted(values))
            for index, column in enumerate(columns):
                params[f"tg_bind_{index}"] = values[column]
            groups.setdefault(columns, []).append(params)
        steps: list[Step] = [(self._statement(cols), rows) for cols, rows in groups.items()]
        if tombstones:
            steps.append((self._tombstone(), tombstones))
        return steps

    def load(self, conn: Connection, namespace: str, keys: Sequence[str]) -> dict[str, Loaded]:
        """The rows of ``keys`` that exist; each value rebuilt as a dict of its fields."""
        m, c = self.mapping, self.table.c
        fields = list(self.fields.items())
        selected: list[ColumnElement[Any]] = [c[m.key_column], c[m.version_column]]
        selected.append(c[m.deleted_column] if m.deleted_column else false())
        selected += [c[column] for _, column in fields]
        found: dict[str, Loaded] = {}
        for chunk in _chunks(keys):
            query = select(*selected).where(c[m.key_column].in_(chunk))
            if m.namespace_column:
                query = query.where(c[m.namespace_column] == namespace)
            for key, version, deleted, *values in conn.execute(query):
                key = str(key)  # noqa: PLW2901 - an integer key column reads back as int
                if deleted:
                    found[key] = Loaded(value=None, version=version, deleted=True)
                else:
                    value = {name: item for (name, _), item in zip(fields, values, strict=True)}
                    found[key] = Loaded(value=value, version=version)
        return found
