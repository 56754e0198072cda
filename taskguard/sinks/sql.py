"""A store in a SQL database: PostgreSQL (psycopg 3) or SQLite, through SQLAlchemy Core.

::

    from taskguard.sinks import SQLStore
    from taskguard.sinks.base import Record

    store = SQLStore("postgresql://app@db/app")  # table taskguard_kv, created if missing
    store.write("users", [Record("u1", {"name": "Ada"}, version=1)])
    store.load("users", "u1")  # Loaded(value={'name': 'Ada'}, version=1, deleted=False)

Each :meth:`SQLStore.write` is one transaction of versioned upserts (see
:mod:`taskguard.sinks.sql_statements`); on PostgreSQL a batch of at least
``copy_threshold`` records goes through ``COPY`` (:mod:`taskguard.sinks.pg_copy`).
Failures raise :class:`~taskguard.errors.StoreError` whose ``transient`` flag comes from
:func:`taskguard.sinks.sql_errors.is_transient`. Needs the ``sql`` extra (and
``postgres`` for PostgreSQL).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Engine, MetaData, Table, create_engine, event
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from taskguard.errors import ConfigurationError, StoreError
from taskguard.urls import redact, scrub, secrets_of

from .base import JSONBatch, Loaded, Record
from .pg_copy import copy_batch, copy_merge
from .sql_errors import is_disconnect, store_error
from .sql_limits import check_sql_record, max_key_bytes
from .sql_statements import KVStatements, MappedStatements, latest_per_key
from .sql_tables import DEFAULT_TABLE, DIALECTS, TableMapping, ddl, kv_table

__all__ = ["COPY_THRESHOLD", "SQLStore", "TableMapping", "ddl"]

#: Batches of at least this many records use COPY on PostgreSQL (see docs/stores.md).
COPY_THRESHOLD = 64

_SQLITE_UPSERT = (3, 24, 0)  # ON CONFLICT ... DO UPDATE ... WHERE


def _db_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [SQLAlchemyError, sqlite3.Error, OSError]
    with contextlib.suppress(ImportError):
        import psycopg  # raised unwrapped by the COPY path

        errors.append(psycopg.Error)
    return tuple(errors)


def _make_engine(url: str, connect_timeout: float, busy_timeout: float) -> Engine:
    """An engine for ``url``: psycopg 3 for PostgreSQL; WAL and a busy timeout for a SQLite
    file; one shared connection for an in-memory SQLite database."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is no number
        # SQLAlchemy's message may quote the whole URL: it is scrubbed of the password.
        reason = scrub(str(exc), secrets_of(url))
        raise ConfigurationError(
            f"invalid store URL {redact(url)!r}: {reason}", field="url"
        ) from exc
    backend = parsed.get_backend_name()
    if backend in {"postgresql", "postgres"}:
        if parsed.drivername in {"postgresql", "postgres"}:
            parsed = parsed.set(drivername="postgresql+psycopg")
        connect_args: dict[str, Any] = {}
        if "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = max(1, round(connect_timeout))
        return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    if backend != "sqlite":
        raise ConfigurationError(
            f"unsupported store URL {redact(url)!r}: use postgresql://... or sqlite://...",
            field="url",
        )
    if sqlite3.sqlite_version_info < _SQLITE_UPSERT:  # pragma: no cover - old platforms
        raise ConfigurationError(
            f"SQLite {sqlite3.sqlite_version} is too old: versioned upserts need 3.24",
            field="url",
        )
    if parsed.database in {None, "", ":memory:"}:
        return create_engine(
            parsed, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    engine = create_engine(
        parsed,
        pool_pre_ping=True,
        connect_args={"timeout": busy_timeout, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.close()

    return engine


def _columns_ok(batch: JSONBatch) -> bool:
    """Whether ``batch`` keeps the promises :func:`latest_per_key` checks record by record
    (one record per key, 64-bit versions); if not, it takes the general path, which says
    what is wrong."""
    versions = batch.versions
    return (
        len(set(batch.keys)) == len(batch.keys)
        and min(versions) >= -(2**63)
        and max(versions) < 2**63
    )


class SQLStore:
    """A :class:`~taskguard.sinks.base.Store` in PostgreSQL or SQLite.

    Thread-safe: every call takes its own pooled connection (an in-memory SQLite
    database has one connection, used by one call at a time).

    Args:
        url_or_engine: ``"postgresql://user@host/db"`` (the psycopg 3 driver is picked),
            ``"sqlite:///path.db"``, ``"sqlite://"`` (in memory, shared by the threads of
            this process), or a SQLAlchemy :class:`~sqlalchemy.Engine` (left open by
            :meth:`close`).
        table: The generic table's name (ignored with ``mapping``).
        create: Create the generic table on first use if it does not exist. Otherwise
            create it with :meth:`create_table` or the SQL of :func:`ddl`.
        schema: The schema of the table (PostgreSQL) or attached database (SQLite).
        mapping: Store records in your own table instead (see :class:`TableMapping`).
        copy_threshold: On PostgreSQL, batches of at least this many records are written
            with ``COPY`` and one merge; smaller ones with ``executemany``.
        connect_timeout: Seconds before a PostgreSQL connection attempt gives up.
        busy_timeout: Seconds a SQLite write waits for another writer's lock.

    Attributes:
        dialect: ``"postgresql"`` or ``"sqlite"``.
        accepts_json_text: True for the generic table: a
            :class:`~taskguard.sinks.base.JSONText` value is written as its JSON verbatim
            (checked by ``jsonb`` on PostgreSQL, by ``json.loads`` on SQLite).
        table: The SQLAlchemy table written (a mapped table once it was reflected).
        max_key_bytes: The longest key it takes, in bytes of UTF-8: 2048 on PostgreSQL
            (its B-tree index entries hold 2704 bytes), None (unbounded) on SQLite.
    """

    def __init__(
        self,
        url_or_engine: str | Engine,
        *,
        table: str = DEFAULT_TABLE,
        create: bool = True,
        schema: str | None = None,
        mapping: TableMapping | None = None,
        copy_threshold: int = COPY_THRESHOLD,
        connect_timeout: float = 5.0,
        busy_timeout: float = 5.0,
    ) -> None:
        if isinstance(url_or_engine, Engine):
            self._engine, self._owns_engine = url_or_engine, False
        else:
            self._engine = _make_engine(url_or_engine, connect_timeout, busy_timeout)
            self._owns_engine = True
        self.dialect: str = self._engine.dialect.name
        if self.dialect not in DIALECTS:
            raise ConfigurationError(
                f"unsupported database {self.dialect!r}: use PostgreSQL or SQLite", field="url"
            )
        if copy_threshold < 1:
            raise ConfigurationError("copy_threshold must be at least 1", field="copy_threshold")
        self.copy_threshold = copy_threshold
        self.mapping = mapping
        #: The generic table takes :class:`~taskguard.sinks.base.JSONText` values verbatim.
        self.accepts_json_text = mapping is None
        self.max_key_bytes = max_key_bytes(self.dialect)
        self.schema = schema
        self.create = create and mapping is None
        self.table: Table = kv_table(table, schema)
        self._statements: KVStatements | MappedStatements | None = None
        self._ready_lock = threading.Lock()
        shared = self._engine.pool.__class__ is StaticPool
        self._serial: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if shared else contextlib.nullcontext()
        )
        self._copy = self.dialect == "postgresql" and self._engine.dialect.driver == "psycopg"
        self._db_errors = _db_errors()

    def __repr__(self) -> str:
        return f"<SQLStore {self.dialect} table={self.table.fullname!r}>"

    # ------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _errors(self, action: str, *, transient: bool | None = None) -> Iterator[None]:
        """Turn driver errors into StoreError; drop the pool after a lost connection."""
        try:
            yield
        except StoreError:
            raise
        except self._db_errors as exc:
            if is_disconnect(exc):
                self._engine.dispose()
            error = store_error(exc, f"{action} ({self.table.fullname})")
            if transient is not None:
                error.transient = transient
            raise error from exc

    def _ready(self) -> KVStatements | MappedStatements:
        """The statements, after creating (generic) or reflecting (mapping) the table."""
        statements = self._statements
        if statements is not None:
            return statements
        with self._ready_lock, self._serial:
            if self._statements is not None:
                return self._statements
            # Never the data's fault, even when a concurrent CREATE raced into a unique
            # violation in the catalog: retry.
            with self._errors("prepare the table", transient=True):
                if self.mapping is not None:
                    self.table = self._reflect(self.mapping)
                    self._statements = MappedStatements(self.table, self.mapping, self.dialect)
                else:
                    if self.create:
                        with self._engine.begin() as conn:
                            self.table.create(conn, checkfirst=True)
                    self._statements = KVStatements(self.table, self.dialect)
            return self._statements

    def _reflect(self, mapping: TableMapping) -> Table:
        with self._engine.connect() as conn:
            table = Table(mapping.table, MetaData(), autoload_with=conn, schema=self.schema)
        mapping.field_columns(table)  # fail now on a missing column
        return table

    # ------------------------------------------------------------ Store protocol

    def check(self, namespace: str, record: Record) -> None:
        """Refuse, up front, a record this database can never hold (no I/O).

        Strict JSON values only (no NaN or Infinity) in the generic table, a dict in a
        mapped one; on PostgreSQL also no NUL character in the key or in the value's
        text, and keys of at most :attr:`max_key_bytes` bytes. See
        :mod:`taskguard.sinks.sql_limits`.

        Raises:
            UnstorableValue: Naming the key and where in the value the problem is.
        """
        check_sql_record(record, namespace, dialect=self.dialect, mapped=self.mapping is not None)

    def write(self, namespace: str, records: Sequence[Record]) -> None:
        """Apply ``records`` in ONE transaction, each as a versioned upsert.

        A record replaces a row only if its version is higher; a delete writes a
        tombstone (or, for a mapping without ``deleted_column``, deletes an older row).
        Nothing of the batch is written when any of it fails.

        Args:
            namespace: The cache namespace.
            records: At most one record per key (if not, the highest version wins).

        Raises:
            StoreError: The write failed and was rolled back; ``transient`` says whether
                a retry may succeed (``False``: a record is to blame).
        """
        if not records:
            return
        statements = self._ready()
        if (
            type(records) is JSONBatch
            and isinstance(statements, KVStatements)
            and self._copy
            and len(records) >= self.copy_threshold
            and _columns_ok(records)
        ):
            # The drain's common batch: its columns go to COPY with no object per record.
            data = copy_batch(records)
            with self._errors("write"), self._engine.begin() as conn:
                copy_merge(conn, self.table, namespace, data)
            return
        batch = latest_per_key(records)
        if (
            isinstance(statements, KVStatements)
            and self._copy
            and len(batch) >= self.copy_threshold
        ):
            rows = statements.rows(batch)
            with self._errors("write"), self._engine.begin() as conn:
                copy_merge(conn, self.table, namespace, rows)
            return
        steps = statements.steps(namespace, batch)
        with self._errors("write"), self._serial, self._engine.begin() as conn:
            for statement, params in steps:
                conn.execute(statement, params)

    def load(self, namespace: str, key: str) -> Loaded | None:
        """The row of ``key`` (a tombstone has ``deleted=True``); ``None`` if never written.

        Raises:
            StoreError: The read failed.
        """
        return self.load_many(namespace, [key]).get(key)

    def load_many(self, namespace: str, keys: Sequence[str]) -> dict[str, Loaded]:
        """The rows of ``keys`` that exist, tombstones included, by key.

        Raises:
            StoreError: The read failed.
        """
        if not keys:
            return {}
        statements = self._ready()
        with self._errors("load"), self._serial, self._engine.connect() as conn:
            return statements.load(conn, namespace, keys)

    def close(self) -> None:
        """Close the pooled connections (an engine passed in is left to its owner)."""
        if self._owns_engine:
            self._engine.dispose()

    # ------------------------------------------------------------ schema

    def create_table(self) -> None:
        """Create the generic table if it does not exist (see :func:`ddl` for the SQL).

        Raises:
            ConfigurationError: The store writes a mapped table (yours to create).
            StoreError: The database failed.
        """
        self._generic_only("create_table")
        with (
            self._errors("create table", transient=True),
            self._serial,
            self._engine.begin() as conn,
        ):
            self.table.create(conn, checkfirst=True)

    def drop_table(self) -> None:
        """Drop the generic table and everything in it (tests, teardown).

        Raises:
            ConfigurationError: The store writes a mapped table (never dropped).
            StoreError: The database failed.
        """
        self._generic_only("drop_table")
        with (
            self._errors("drop table", transient=True),
            self._serial,
            self._engine.begin() as conn,
        ):
            self.table.drop(conn, checkfirst=True)
        self._statements = None

    def _generic_only(self, method: str) -> None:
        if self.mapping is not None:
            raise ConfigurationError(
                f"{method}() works on the generic table only; a mapped table "
                f"({self.mapping.table!r}) is created and dropped by its owner",
                field="mapping",
            )

    def __enter__(self) -> SQLStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
