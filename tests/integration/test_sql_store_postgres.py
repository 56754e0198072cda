"""SQLStore on a real PostgreSQL: both write paths (executemany and COPY + merge) keep
the same versioned-upsert semantics, a bad record rolls its batch back as a data error,
and the store survives the server going down and coming back."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from sqlalchemy import exc as sa_exc

from taskguard.errors import StoreError
from taskguard.sinks import Loaded, Record, SQLStore, TableMapping
from taskguard.sinks.base import JSONText
from taskguard.testing import PostgresServer
from taskguard.testing.servers import find_postgres_bindir

EXECUTEMANY = 10**9  # a copy_threshold no batch reaches
COPY = 1  # every batch goes through COPY

MakeStore = Callable[..., SQLStore]


def _no_postgres_binaries() -> bool:
    try:
        find_postgres_bindir()
    except RuntimeError:
        return True
    return False


@pytest.fixture
def table_name(postgres_dsn: str) -> Iterator[str]:
    """A unique table name, dropped after the test."""
    name = f"tg_sql_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def make_store(postgres_dsn: str, table_name: str) -> Iterator[MakeStore]:
    stores: list[SQLStore] = []

    def make(**options: object) -> SQLStore:
        options.setdefault("table", table_name)
        store = SQLStore(postgres_dsn, **options)  # type: ignore[arg-type]
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture(params=[EXECUTEMANY, COPY], ids=["executemany", "copy"])
def store(request: pytest.FixtureRequest, make_store: MakeStore) -> SQLStore:
    return make_store(copy_threshold=request.param)


def _sql(dsn: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description else []


def test_upsert_versions_and_tombstones(store: SQLStore) -> None:
    assert store.dialect == "postgresql"
    store.write("ns", [Record("a", {"x": [1, "é"]}, 5), Record("b", 2, 5), Record("c", 3, 5)])
    store.write(
        "ns",
        [
            Record("a", "newer", 9),
            Record("b", "older", 4),  # ignored
            Record("c", None, 6, deleted=True),
            Record("d", None, 1, deleted=True),  # a tombstone for a key never written
        ],
    )
    assert store.load_many("ns", ["a", "b", "c", "d", "e"]) == {
        "a": Loaded("newer", 9),
        "b": Loaded(2, 5),
        "c": Loaded(None, 6, deleted=True),
        "d": Loaded(None, 1, deleted=True),
    }
    store.write("ns", [Record("c", "older than the delete", 5)])
    assert store.load("ns", "c") == Loaded(None, 6, deleted=True)
    assert store.load("other", "a") is None


def test_rewriting_a_batch_is_idempotent(store: SQLStore) -> None:
    batch = [Record(f"k{i}", {"i": i}, 1000 + i, deleted=i % 4 == 0) for i in range(300)]
    store.write("ns", batch)
    first = store.load_many("ns", [r.key for r in batch])
    store.write("ns", batch)
    store.write("ns", batch[::-1])
    assert store.load_many("ns", [r.key for r in batch]) == first
    assert first["k1"] == Loaded({"i": 1}, 1001)
    assert first["k4"] == Loaded(None, 1004, deleted=True)


def test_values_are_jsonb(store: SQLStore, postgres_dsn: str, table_name: str) -> None:
    store.write("ns", [Record("k", {"b": 1, "a": [True, None]}, 1)])
    rows = _sql(
        postgres_dsn,
        f"SELECT jsonb_typeof(value), value->'a', updated_at IS NOT NULL FROM {table_name}",
    )
    assert rows == [("object", [True, None], True)]


def test_both_paths_write_the_same_rows(make_store: MakeStore, table_name: str) -> None:
    def batch(version: int) -> list[Record]:
        return [
            Record(f"k{i}", {"v": version, "i": i}, version + i % 3, deleted=i % 5 == 0)
            for i in range(200)
        ]

    by_copy = make_store(copy_threshold=COPY)
    by_executemany = make_store(table=f"{table_name}_em", copy_threshold=EXECUTEMANY)
    try:
        for store in (by_copy, by_executemany):
            store.write("ns", batch(10))
            store.write("ns", batch(5))
            store.write("ns", batch(20))
        keys = [f"k{i}" for i in range(200)]
        assert by_copy.load_many("ns", keys) == by_executemany.load_many("ns", keys)
    finally:
        by_executemany.drop_table()


def test_copy_threshold_picks_the_path(make_store: MakeStore) -> None:
    store = make_store(copy_threshold=50)

    def staged() -> bool:
        # The stage is a temporary table of the (single) pooled connection that wrote.
        with store._engine.connect() as conn:
            found = conn.exec_driver_sql("SELECT to_regclass('pg_temp.taskguard_stage')")
            return found.scalar() is not None

    store.write("ns", [Record(f"k{i}", i, 1) for i in range(49)])
    assert not staged()
    store.write("ns", [Record(f"k{i}", i, 2) for i in range(50)])
    assert staged()
    assert store.load_many("ns", ["k0", "k49"]) == {"k0": Loaded(0, 2), "k49": Loaded(49, 2)}


def test_big_batch(make_store: MakeStore) -> None:
    store = make_store()  # the default threshold: COPY
    n = 50_000
    store.write("big", [Record(f"k{i:05}", {"i": i}, 7) for i in range(n)])
    # Odd keys get a newer version (8), even keys an older one (6).
    store.write("big", [Record(f"k{i:05}", {"i": -i}, 6 + 2 * (i % 2)) for i in range(n)])
    found = store.load_many("big", [f"k{i:05}" for i in range(n)])
    assert len(found) == n
    assert all(found[f"k{i:05}"] == Loaded({"i": -i}, 8) for i in range(1, n, 2))
    assert all(found[f"k{i:05}"] == Loaded({"i": i}, 7) for i in range(0, n, 2))
    store.write("big", [Record(f"k{i:05}", None, 8, deleted=True) for i in range(0, n, 2)])
    found = store.load_many("big", ["k00000", "k00001", "k49998"])
    assert found["k00000"].deleted
    assert not found["k00001"].deleted
    assert found["k49998"] == Loaded(None, 8, deleted=True)
    assert found["k00001"] == Loaded({"i": -1}, 8)


def test_check_violation_rolls_the_batch_back(
    store: SQLStore, postgres_dsn: str, table_name: str
) -> None:
    store.create_table()
    _sql(
        postgres_dsn,
        f"ALTER TABLE {table_name} ADD CONSTRAINT no_poison CHECK (key <> 'poison')",
    )
    store.write("ns", [Record("a", "a1", 1)])
    batch = [Record("a", "a2", 2)] + [Record(f"n{i}", i, 2) for i in range(100)]
    with pytest.raises(StoreError, match="no_poison") as caught:
        store.write("ns", [*batch, Record("poison", 0, 2)])
    assert caught.value.transient is False
    assert isinstance(caught.value.__cause__, (sa_exc.IntegrityError, psycopg.IntegrityError))
    assert _sql(postgres_dsn, f"SELECT key, value, version FROM {table_name}") == [("a", "a1", 1)]
    store.write("ns", batch)
    assert store.load("ns", "a") == Loaded("a2", 2)


def test_values_postgres_rejects_are_data_errors(store: SQLStore) -> None:
    with pytest.raises(StoreError) as caught:
        store.write("ns", [Record("ok", 1, 1), Record("nul", "a\u0000b", 1)])
    assert caught.value.transient is False
    assert store.load("ns", "ok") is None


def test_a_lock_timeout_is_transient(make_store: MakeStore, postgres_dsn: str) -> None:
    store = make_store()
    store.write("ns", [Record("k", 1, 1)])
    impatient = SQLStore(
        f"{postgres_dsn}?options=-c%20lock_timeout%3D200",
        table=store.table.name,
        create=False,
    )
    with psycopg.connect(postgres_dsn) as holder:
        holder.execute(f"SELECT * FROM {store.table.name} FOR UPDATE")  # holds the row lock
        try:
            with pytest.raises(StoreError, match="lock timeout") as caught:
                impatient.write("ns", [Record("k", 2, 2)])
            assert caught.value.transient is True
        finally:
            holder.rollback()
    impatient.write("ns", [Record("k", 2, 2)])
    assert store.load("ns", "k") == Loaded(2, 2)
    impatient.close()


def test_mapping_to_a_user_table(postgres_dsn: str, table_name: str) -> None:
    _sql(
        postgres_dsn,
        f"CREATE TABLE {table_name} (tenant text NOT NULL, id text NOT NULL,"
        " name text NOT NULL DEFAULT '' CHECK (name <> 'poison'), profile jsonb, visits int,"
        " version bigint NOT NULL, deleted boolean NOT NULL DEFAULT false,"
        " PRIMARY KEY (tenant, id))",
    )
    mapping = TableMapping(
        table_name,
        key_column="id",
        columns={"name": "name", "profile": "profile", "visits": "visits"},
        namespace_column="tenant",
    )
    with SQLStore(postgres_dsn, mapping=mapping) as store:
        store.write(
            "t1",
            [
                Record("u1", {"name": "Ada", "profile": {"langs": ["en"]}, "visits": 3}, 1),
                Record("u2", {"name": "Bob"}, 1),
            ],
        )
        store.write("t2", [Record("u1", {"name": "Other tenant"}, 1)])
        store.write("t1", [Record("u1", {"visits": 4}, 2), Record("u2", {"name": "Old"}, 0)])
        assert store.load_many("t1", ["u1", "u2"]) == {
            "u1": Loaded({"name": "Ada", "profile": {"langs": ["en"]}, "visits": 4}, 2),
            "u2": Loaded({"name": "Bob", "profile": None, "visits": None}, 1),
        }
        store.write("t1", [Record("u2", None, 3, deleted=True)])
        assert store.load("t1", "u2") == Loaded(None, 3, deleted=True)
        assert store.load("t2", "u1") == Loaded(
            {"name": "Other tenant", "profile": None, "visits": None}, 1
        )
        with pytest.raises(StoreError) as caught:
            store.write(
                "t1", [Record("u3", {"name": "Cy"}, 1), Record("u4", {"name": "poison"}, 1)]
            )
        assert caught.value.transient is False
        assert store.load("t1", "u3") is None
        with pytest.raises(StoreError) as caught:
            store.write("t1", [Record("u5", {"visits": "many"}, 1)])
        assert caught.value.transient is False


@pytest.mark.skipif(_no_postgres_binaries(), reason="no PostgreSQL server binaries")
@pytest.mark.parametrize("threshold", [EXECUTEMANY, COPY], ids=["executemany", "copy"])
def test_the_store_survives_an_outage(threshold: int) -> None:
    with PostgresServer() as server:
        store = SQLStore(server.dsn, copy_threshold=threshold, connect_timeout=2)
        try:
            store.write("ns", [Record("k", 1, 1)])
            server.stop()
            for attempt in range(2):  # a pooled connection first, then a fresh connect
                started = time.monotonic()
                with pytest.raises(StoreError) as caught:
                    store.write("ns", [Record("k", 2 + attempt, 2 + attempt)])
                assert caught.value.transient is True, caught.value
                assert caught.value.__cause__ is not None
                assert time.monotonic() - started < 30
            with pytest.raises(StoreError) as caught:
                store.load("ns", "k")
            assert caught.value.transient is True
            server.start()
            store.write("ns", [Record("k", 5, 5)])
            assert store.load("ns", "k") == Loaded(5, 5)
        finally:
            store.close()


def test_json_text_and_tricky_keys_on_both_paths(store: SQLStore) -> None:
    keys = ["tab\tkey", "back\\slash", "new\nline", "cr\rkey", "\\N", "\\.", "ünï ✓ 𝄞", "\x01"]
    records = [
        Record(key, JSONText(json.dumps({"k": key, "i": i}, ensure_ascii=False)), 10 + i)
        for i, key in enumerate(keys)
    ]
    records.append(Record("esc", JSONText('{"a":"x\\\\y\\"z\\u00e9\\t"}'), 3))
    records.append(Record("dict", {"plain": "value\\"}, 4))
    records.append(Record("tomb", None, 5, deleted=True))
    store.write("ns", records)
    found = store.load_many("ns", [*keys, "esc", "dict", "tomb"])
    assert {k: found[k] for k in keys} == {
        key: Loaded({"k": key, "i": i}, 10 + i) for i, key in enumerate(keys)
    }
    assert found["esc"] == Loaded({"a": 'x\\y"zé\t'}, 3)
    assert found["dict"] == Loaded({"plain": "value\\"}, 4)
    assert found["tomb"] == Loaded(None, 5, deleted=True)


@pytest.mark.parametrize("bad", ["{not json", '{"n":NaN}', '"a\\u0000b"', ""])
def test_bad_json_text_is_a_data_error(store: SQLStore, bad: str) -> None:
    with pytest.raises(StoreError) as caught:
        store.write("ns", [Record("ok", JSONText("1"), 1), Record("bad", JSONText(bad), 1)])
    assert caught.value.transient is False
    assert store.load("ns", "ok") is None
