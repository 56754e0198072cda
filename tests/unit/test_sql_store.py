"""SQLStore on real SQLite databases (a file and memory): versioned upserts, tombstones,
mapped user tables, atomic batches and the transient/permanent error classification."""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import exc as sa_exc

import taskguard.sinks
from taskguard.errors import ConfigurationError, StoreError
from taskguard.sinks import Loaded, Record, SQLStore, Store, TableMapping
from taskguard.sinks.base import JSONText, accepts_json_text
from taskguard.sinks.pg_copy import copy_text, escape_copy
from taskguard.sinks.sql import ddl
from taskguard.sinks.sql_errors import is_disconnect, is_transient, store_error


@pytest.fixture(params=["file", "memory"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}" if request.param == "file" else "sqlite://"


@pytest.fixture
def store(url: str) -> Iterator[SQLStore]:
    with SQLStore(url) as store:
        yield store


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


# ---------------------------------------------------------------- the generic table


def test_is_a_store(store: SQLStore) -> None:
    assert isinstance(store, Store)
    assert store.dialect == "sqlite"


def test_upsert_and_load(store: SQLStore) -> None:
    store.write("users", [Record("u1", {"name": "Ada", "tags": ["x"]}, 5), Record("u2", 7, 1)])
    assert store.load("users", "u1") == Loaded({"name": "Ada", "tags": ["x"]}, 5)
    assert store.load("users", "u2") == Loaded(7, 1)
    assert store.load("users", "missing") is None
    assert store.load("other-namespace", "u1") is None


def test_higher_version_wins_lower_is_ignored(store: SQLStore) -> None:
    store.write("ns", [Record("k", "v5", 5)])
    store.write("ns", [Record("k", "v9", 9)])
    assert store.load("ns", "k") == Loaded("v9", 9)
    store.write("ns", [Record("k", "v7", 7)])  # older: skipped, not an error
    store.write("ns", [Record("k", "same-version", 9)])  # equal: skipped too
    assert store.load("ns", "k") == Loaded("v9", 9)


def test_tombstones_are_versioned(store: SQLStore) -> None:
    store.write("ns", [Record("k", "v1", 1)])
    store.write("ns", [Record("k", "ignored", 2, deleted=True)])
    assert store.load("ns", "k") == Loaded(None, 2, deleted=True)
    store.write("ns", [Record("k", "older than the delete", 1)])
    assert store.load("ns", "k") == Loaded(None, 2, deleted=True)
    store.write("ns", [Record("k", "back", 3)])
    assert store.load("ns", "k") == Loaded("back", 3)
    store.write("ns", [Record("never-written", None, 4, deleted=True)])
    assert store.load("ns", "never-written") == Loaded(None, 4, deleted=True)


def test_rewriting_a_batch_is_idempotent(store: SQLStore) -> None:
    batch = [Record(f"k{i}", {"i": i}, 100 + i, deleted=i % 3 == 0) for i in range(20)]
    store.write("ns", batch)
    first = store.load_many("ns", [r.key for r in batch])
    store.write("ns", batch)
    store.write("ns", list(reversed(batch)))
    assert store.load_many("ns", [r.key for r in batch]) == first
    assert first["k1"] == Loaded({"i": 1}, 101)
    assert first["k3"] == Loaded(None, 103, deleted=True)


def test_duplicate_keys_in_a_batch_keep_the_highest_version(store: SQLStore) -> None:
    store.write("ns", [Record("k", "new", 2), Record("k", "old", 1)])
    assert store.load("ns", "k") == Loaded("new", 2)


def test_load_many(store: SQLStore) -> None:
    store.write("ns", [Record(f"k{i}", i, 1) for i in range(1200)])
    store.write("ns", [Record("k5", None, 2, deleted=True)])
    keys = [f"k{i}" for i in range(0, 1300, 5)]  # more than one chunk, some missing
    found = store.load_many("ns", [*keys, "k0"])
    assert set(found) == {f"k{i}" for i in range(0, 1200, 5)}
    assert found["k10"] == Loaded(10, 1)
    assert found["k5"] == Loaded(None, 2, deleted=True)
    assert store.load_many("ns", []) == {}


def test_empty_write_is_a_no_op(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    with SQLStore(f"sqlite:///{db}") as store:
        store.write("ns", [])
    assert _rows(db, "SELECT name FROM sqlite_master WHERE type='table'") == []


def test_values_are_compact_json_and_rows_carry_updated_at(tmp_path: Path) -> None:
    db = tmp_path / "kv.db"
    with SQLStore(f"sqlite:///{db}", table="kv") as store:
        store.write("ns", [Record("k", {"a": [1, 2], "é": None}, 1)])
    [(value, updated_at)] = _rows(db, "SELECT value, updated_at FROM kv")
    assert value == '{"a":[1,2],"é":null}'
    assert updated_at is not None
    assert _rows(db, "PRAGMA journal_mode") == [("wal",)]


def test_values_that_are_not_json_are_data_errors(store: SQLStore) -> None:
    good = Record("good", 1, 1)
    for bad in (object(), {1, 2}, math.nan, {"x": math.inf}):
        with pytest.raises(StoreError, match=r"'bad'.*not JSON") as caught:
            store.write("ns", [good, Record("bad", bad, 1)])
        assert caught.value.transient is False
    assert store.load("ns", "good") is None  # nothing of the batch was written


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (Record(42, 1, 1), "not a string"),  # type: ignore[arg-type]
        (Record("k", 1, "1"), "64-bit"),  # type: ignore[arg-type]
        (Record("k", 1, True), "64-bit"),
        (Record("k", 1, 2**63), "64-bit"),
    ],
)
def test_bad_keys_and_versions_are_data_errors(
    store: SQLStore, record: Record, message: str
) -> None:
    with pytest.raises(StoreError, match=message) as caught:
        store.write("ns", [record])
    assert caught.value.transient is False


def test_check_violation_is_a_data_error_and_rolls_the_batch_back(tmp_path: Path) -> None:
    db = tmp_path / "check.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE kv (namespace TEXT NOT NULL, key TEXT NOT NULL CHECK (key <> 'poison'),"
            " value TEXT, version BIGINT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT 0,"
            " updated_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,"
            " PRIMARY KEY (namespace, key))"
        )
    with SQLStore(f"sqlite:///{db}", table="kv", create=False) as store:
        store.write("ns", [Record("a", "a1", 1)])
        batch = [Record("a", "a2", 2), Record("b", "b2", 2), Record("poison", 0, 2)]
        with pytest.raises(StoreError) as caught:
            store.write("ns", batch)
        assert caught.value.transient is False
        assert isinstance(caught.value.__cause__, sa_exc.IntegrityError)
        assert store.load_many("ns", ["a", "b", "poison"]) == {"a": Loaded("a1", 1)}
        store.write("ns", batch[:2])  # the store is fine afterwards
        assert store.load("ns", "b") == Loaded("b2", 2)


def test_database_is_locked_is_transient_and_the_store_recovers(tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    with SQLStore(f"sqlite:///{db}", busy_timeout=0.1) as store:
        store.write("ns", [Record("k", 1, 1)])
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
        try:
            with pytest.raises(StoreError, match="locked") as caught:
                store.write("ns", [Record("k", 2, 2)])
            assert caught.value.transient is True
            assert isinstance(caught.value.__cause__, sa_exc.OperationalError)
        finally:
            other.execute("ROLLBACK")
            other.close()
        store.write("ns", [Record("k", 2, 2)])
        assert store.load("ns", "k") == Loaded(2, 2)


def test_a_missing_table_is_retried_not_dead_lettered(tmp_path: Path) -> None:
    with SQLStore(f"sqlite:///{tmp_path / 'x.db'}", create=False) as store:
        with pytest.raises(StoreError, match="no such table") as caught:
            store.write("ns", [Record("k", 1, 1)])
        assert caught.value.transient is True
        store.create_table()
        store.write("ns", [Record("k", 1, 1)])
        assert store.load("ns", "k") == Loaded(1, 1)
        store.drop_table()
        with pytest.raises(StoreError):
            store.load("ns", "k")


def test_memory_database_is_shared_by_threads() -> None:
    with SQLStore("sqlite://") as store:

        def writer(n: int) -> None:
            for version in range(1, 21):
                store.write("ns", [Record(f"t{n}-{i}", version, version) for i in range(10)])

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        found = store.load_many("ns", [f"t{n}-{i}" for n in range(4) for i in range(10)])
        assert len(found) == 40
        assert {loaded.version for loaded in found.values()} == {20}


def test_ddl_creates_the_table_the_store_uses(tmp_path: Path) -> None:
    db = tmp_path / "migrated.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(ddl("sqlite", "kv_migrated"))
    with SQLStore(f"sqlite:///{db}", table="kv_migrated", create=False) as store:
        store.write("ns", [Record("k", [1], 1)])
        assert store.load("ns", "k") == Loaded([1], 1)
    postgres = ddl("postgresql", "kv", schema="app")
    assert "CREATE TABLE IF NOT EXISTS app.kv" in postgres
    assert "value JSONB" in postgres
    assert "PRIMARY KEY (namespace, key)" in postgres
    with pytest.raises(ConfigurationError, match="dialect"):
        ddl("mysql")


def test_the_documented_ddl_is_what_ddl_returns() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "stores.md").read_text()
    assert ddl("postgresql") in docs
    assert ddl("sqlite") in docs


def test_an_engine_passed_in_is_left_open(tmp_path: Path) -> None:
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'e.db'}")
    store = SQLStore(engine, table="kv")
    store.write("ns", [Record("k", 1, 1)])
    store.close()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM kv").scalar() == 1
    engine.dispose()


def test_bad_configuration() -> None:
    with pytest.raises(ConfigurationError, match="unsupported store URL"):
        SQLStore("mysql://localhost/db")
    with pytest.raises(ConfigurationError, match="invalid store URL"):
        SQLStore("not a url")
    with pytest.raises(ConfigurationError, match="copy_threshold"):
        SQLStore("sqlite://", copy_threshold=0)


def test_sinks_exports_the_sql_store_lazily() -> None:
    assert taskguard.sinks.SQLStore is SQLStore
    assert "SQLStore" in taskguard.sinks.__all__
    with pytest.raises(AttributeError):
        _ = taskguard.sinks.NoSuchStore


# ---------------------------------------------------------------- mapped user tables

USERS = """
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '' CHECK (name <> 'poison'),
    email TEXT,
    visits INTEGER,
    version BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT 0
)
"""


@pytest.fixture
def users_db(tmp_path: Path) -> Path:
    db = tmp_path / "users.db"
    with sqlite3.connect(db) as conn:
        conn.execute(USERS)
    return db


def test_mapping_writes_fields_to_columns(users_db: Path) -> None:
    mapping = TableMapping("users", key_column="id", columns={"name": "name", "mail": "email"})
    with SQLStore(f"sqlite:///{users_db}", mapping=mapping) as store:
        store.write("users", [Record("u1", {"name": "Ada", "mail": "a@x", "extra": 1}, 3)])
        assert _rows(users_db, "SELECT id, name, email, version, deleted FROM users") == [
            ("u1", "Ada", "a@x", 3, 0)
        ]
        assert store.load("users", "u1") == Loaded({"name": "Ada", "mail": "a@x"}, 3)
        store.write("users", [Record("u1", {"name": "Old"}, 2)])  # older: ignored
        store.write("users", [Record("u1", {"name": "Ada L."}, 4)])  # mail kept
        assert store.load("users", "u1") == Loaded({"name": "Ada L.", "mail": "a@x"}, 4)
        store.write("users", [Record("u1", None, 5, deleted=True)])
        assert store.load("users", "u1") == Loaded(None, 5, deleted=True)
        # A soft delete: the columns stay as they were.
        assert _rows(users_db, "SELECT name, deleted FROM users") == [("Ada L.", 1)]


def test_mapping_without_columns_uses_the_value_keys(users_db: Path) -> None:
    mapping = TableMapping("users", key_column="id")
    with SQLStore(f"sqlite:///{users_db}", mapping=mapping) as store:
        store.write("any", [Record("u1", {"name": "Ada", "visits": 2}, 1)])
        assert store.load("any", "u1") == Loaded({"name": "Ada", "email": None, "visits": 2}, 1)
        with pytest.raises(StoreError, match="no column") as caught:
            store.write("any", [Record("u2", {"name": "B", "nickname": "b"}, 1)])
        assert caught.value.transient is False
        with pytest.raises(StoreError, match="dict value") as caught:
            store.write("any", [Record("u3", ["not", "a", "dict"], 1)])
        assert caught.value.transient is False


def test_mapping_check_violation_rolls_the_whole_batch_back(users_db: Path) -> None:
    mapping = TableMapping("users", key_column="id")
    with SQLStore(f"sqlite:///{users_db}", mapping=mapping) as store:
        batch = [
            Record("u1", {"name": "Ada"}, 1),
            Record("u2", {"email": "b@x"}, 1),  # another column set: another statement
            Record("u3", None, 1, deleted=True),
            Record("u4", {"name": "poison"}, 1),
        ]
        with pytest.raises(StoreError) as caught:
            store.write("ns", batch)
        assert caught.value.transient is False
        assert _rows(users_db, "SELECT count(*) FROM users") == [(0,)]


def test_mapping_with_real_deletes_and_a_namespace_column(tmp_path: Path) -> None:
    db = tmp_path / "items.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE items (tenant TEXT NOT NULL, sku TEXT NOT NULL, doc TEXT,"
            " rev BIGINT NOT NULL, PRIMARY KEY (tenant, sku))"
        )
    mapping = TableMapping(
        "items",
        key_column="sku",
        columns={"doc": "doc"},
        version_column="rev",
        deleted_column=None,
        namespace_column="tenant",
    )
    with SQLStore(f"sqlite:///{db}", mapping=mapping) as store:
        store.write("t1", [Record("s1", {"doc": "one"}, 1)])
        store.write("t2", [Record("s1", {"doc": "two"}, 1)])
        assert store.load("t1", "s1") == Loaded({"doc": "one"}, 1)
        store.write("t1", [Record("s1", None, 1, deleted=True)])  # not newer: kept
        assert store.load("t1", "s1") == Loaded({"doc": "one"}, 1)
        store.write("t1", [Record("s1", None, 2, deleted=True)])
        assert store.load("t1", "s1") is None
        assert store.load("t2", "s1") == Loaded({"doc": "two"}, 1)
        with pytest.raises(ConfigurationError, match="mapped table"):
            store.create_table()
        with pytest.raises(ConfigurationError, match="mapped table"):
            store.drop_table()


def test_mapping_checks_its_columns(users_db: Path) -> None:
    with pytest.raises(ConfigurationError, match="must differ"):
        TableMapping("users", key_column="id", version_column="id")
    with pytest.raises(ConfigurationError, match="control columns"):
        TableMapping("users", key_column="id", columns={"v": "version"})
    missing = TableMapping("users", key_column="id", columns={"age": "age"})
    store = SQLStore(f"sqlite:///{users_db}", mapping=missing)
    with pytest.raises(ConfigurationError, match=r"no column\(s\) \['age'\]"):
        store.write("ns", [Record("u1", {"age": 3}, 1)])
    store.close()


# ---------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.OperationalError("disk I/O error"), True),
        (sqlite3.IntegrityError("CHECK constraint failed: x"), False),
        (sqlite3.DataError("string or blob too big"), False),
        (sqlite3.ProgrammingError("Error binding parameter 1: type 'dict' is unsupported"), False),
        (psycopg.errors.SerializationFailure("could not serialize"), True),
        (psycopg.errors.DeadlockDetected("deadlock detected"), True),
        (psycopg.errors.AdminShutdown("terminating connection"), True),
        (psycopg.errors.CannotConnectNow("the database system is starting up"), True),
        (psycopg.errors.TooManyConnections("too many clients"), True),
        (psycopg.errors.QueryCanceled("statement timeout"), True),
        (psycopg.errors.LockNotAvailable("lock timeout"), True),
        (psycopg.errors.UndefinedTable("no such table"), True),
        (psycopg.errors.CheckViolation("check"), False),
        (psycopg.errors.UniqueViolation("duplicate key"), False),
        (psycopg.errors.NotNullViolation("null"), False),
        (psycopg.errors.UntranslatableCharacter("\\u0000"), False),
        (psycopg.errors.NumericValueOutOfRange("bigint"), False),
        (psycopg.errors.CardinalityViolation("twice"), False),
        (psycopg.errors.ProgramLimitExceeded("index row size"), False),
        (psycopg.OperationalError("connection refused"), True),
        (psycopg.InterfaceError("the connection is closed"), True),
        (psycopg.ProgrammingError("cannot adapt type 'object'"), False),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (TypeError("bad value"), False),
        (StoreError("x", transient=False), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_classification(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient
    wrapped = sa_exc.DBAPIError("INSERT ...", {}, error)  # type: ignore[arg-type]
    if not isinstance(error, StoreError):
        assert is_transient(wrapped) is transient  # SQLAlchemy's wrapper is looked through
        made = store_error(wrapped, "write to kv")
        assert made.transient is transient
        assert made.args[0].startswith("write to kv failed (")


def test_disconnects() -> None:
    assert is_disconnect(psycopg.OperationalError("server closed the connection"))
    assert is_disconnect(psycopg.errors.AdminShutdown("terminating"))
    assert is_disconnect(psycopg.errors.ConnectionFailure("gone"))
    assert not is_disconnect(psycopg.errors.SerializationFailure("retry"))
    assert not is_disconnect(sqlite3.OperationalError("database is locked"))
    invalidated = sa_exc.DBAPIError(
        "SELECT 1",
        {},
        sqlite3.OperationalError("x"),
        connection_invalidated=True,  # type: ignore[arg-type]
    )
    assert is_disconnect(invalidated)
    assert is_transient(invalidated)


# ---------------------------------------------------------------- JSON text and COPY text


def test_json_text_is_stored_verbatim_and_checked(store: SQLStore) -> None:
    assert store.accepts_json_text
    text = JSONText('{"q":"a\\"b\\\\c\\n","é":[1,2.5,null]}')
    store.write("ns", [Record("k", text, 1), Record("gone", None, 1, deleted=True)])
    assert store.load("ns", "k") == Loaded({"q": 'a"b\\c\n', "é": [1, 2.5, None]}, 1)
    for bad in ("{not json", '{"n":NaN}', "Infinity", ""):
        with pytest.raises(StoreError) as caught:
            store.write("ns", [Record("ok", 1, 5), Record("bad", JSONText(bad), 5)])
        assert caught.value.transient is False
        assert store.load("ns", "ok") is None  # the whole batch rolled back


def test_a_mapped_table_takes_no_json_text(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    with sqlite3.connect(tmp_path / "m.db") as conn:
        conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, name TEXT, version INTEGER)")
    with SQLStore(url, mapping=TableMapping("t", key_column="id")) as mapped:
        assert not accepts_json_text(mapped)
    with SQLStore(url) as generic:
        assert accepts_json_text(generic)
    assert not accepts_json_text(object())


def _parse_copy(data: str) -> list[tuple[str, str | None, int, bool]]:
    """A reference reader of COPY's text format (the four stage columns)."""
    escapes = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}

    def field(raw: str) -> str | None:
        if raw == "\\N":
            return None
        out, i = [], 0
        while i < len(raw):
            if raw[i] == "\\":
                out.append(escapes[raw[i + 1]])
                i += 2
            else:
                out.append(raw[i])
                i += 1
        return "".join(out)

    assert data == "" or data.endswith("\n")
    rows = []
    for line in data.split("\n")[:-1]:
        key, value, version, deleted = line.split("\t")
        parsed_key = field(key)
        assert parsed_key is not None
        rows.append((parsed_key, field(value), int(version), deleted == "t"))
    return rows


TRICKY = [
    "plain",
    "tab\there",
    "back\\slash",
    "new\nline",
    "carriage\rreturn",
    "\\N",
    "\\.",
    "ünïcødé ✓ 𝄞",
    "mix\t\\\n\r\\t",
    "",
]


@pytest.mark.parametrize("placeholder", ["", "\x00", "\x01", "\x02"])
def test_copy_text_escapes_keys_and_json(placeholder: str) -> None:
    rows = [
        (key + placeholder, json.dumps({"s": key}, ensure_ascii=False), i, False)
        for i, key in enumerate(TRICKY)
    ]
    rows.append(("tomb" + placeholder, None, 99, True))
    rows.append(("raw json", '{"a":"x\\\\y\\"z\\u00e9\\t"}', 2**62, False))
    assert _parse_copy(copy_text(rows)) == rows


def test_copy_text_of_nothing() -> None:
    assert copy_text([]) == ""
    assert _parse_copy(copy_text([("k", None, 1, True)])) == [("k", None, 1, True)]


@given(
    st.lists(
        st.tuples(
            st.text(),
            st.one_of(st.none(), st.text()),
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
            st.booleans(),
        ),
        max_size=20,
    )
)
def test_copy_text_round_trips(rows: list[tuple[str, str | None, int, bool]]) -> None:
    assert _parse_copy(copy_text(rows)) == rows


@pytest.mark.parametrize("text", TRICKY)
def test_escape_copy(text: str) -> None:
    escaped = escape_copy(text)
    assert not {"\t", "\n", "\r"} & set(escaped)
    assert _parse_copy(f"k\t{escaped}\t1\tf\n") == [("k", text, 1, False)]
