"""The cache against a real store (SQLite file and PostgreSQL) and the real drain pool:
no stale reads while a write is queued, Redis down at write time, a failing store under
write-through, and the backpressure policies."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import taskguard
from taskguard.backend.base import Backend
from taskguard.cache import CacheService
from taskguard.drain import DrainPool
from taskguard.errors import StoreError, WriteBehindFull
from taskguard.sinks.sql import SQLStore
from taskguard.testing.servers import RedisServer


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLStore]:
    if request.param == "sqlite":
        sql = SQLStore(f"sqlite:///{tmp_path / 'cache.db'}")
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        sql = SQLStore(dsn, table=f"tg_cache_{uuid.uuid4().hex[:8]}")
    try:
        yield sql
    finally:
        if request.param == "postgresql":
            sql.drop_table()
        sql.close()


@pytest.fixture
def backend(redis_url: str, tg_prefix: str) -> Iterator[Backend]:
    backend = taskguard.connect(redis_url, prefix=tg_prefix).backend
    yield backend
    backend.close()


def drain(backend: Backend, store: SQLStore, namespace: str) -> None:
    """Run a drain pool until the namespace's queues are empty, then stop it."""
    with DrainPool(backend, store, namespaces=[namespace], workers=1, linger=0.01) as pool:  # type: ignore[arg-type]
        assert pool.wait_idle(30), "the drain did not empty the queue"


def refuse_writes(store: SQLStore) -> None:
    """Make the database itself reject every insert and update of the store's table."""
    table = store.table.fullname
    if store.dialect == "sqlite":
        statements = [
            f"CREATE TRIGGER no_{op} BEFORE {op} ON {table} BEGIN SELECT RAISE(ABORT, 'no'); END"
            for op in ("INSERT", "UPDATE")
        ]
    else:
        statements = [f"ALTER TABLE {table} ADD CONSTRAINT no_writes CHECK (false) NOT VALID"]
    with store._engine.begin() as connection:
        for statement in statements:
            connection.exec_driver_sql(statement)


def value_key(cache: CacheService, key: str) -> str:
    return cache._ops.value_key(key)


def test_no_stale_read_while_a_write_is_queued(
    backend: Backend, store: SQLStore, redis_client: redis.Redis
) -> None:
    cache = taskguard.connect(backend).cache(
        "orders", ttl=60, strategy="write-behind", store=store, partitions=2
    )
    cache.set("o1", {"v": 1})
    drain(backend, store, "orders")
    row = store.load("orders", "o1")
    assert row is not None
    assert row.value == {"v": 1}
    cache.set("o1", {"v": 2})  # queued, not drained
    redis_client.delete(value_key(cache, "o1"))  # the cached copy expires before the drain
    assert cache.get("o1") == {"v": 2}  # from the queue, never v1 from the store
    assert cache.get_many(["o1"]) == {"o1": {"v": 2}}
    assert redis_client.get(value_key(cache, "o1")) is None  # the v1 row was not re-cached
    # A reader that loaded v1 from the store just before the write cannot cache it now.
    assert not cache._ops.fill("o1", b'=0:{"v":1}', 60_000, only_if_absent=True)
    drain(backend, store, "orders")
    row = store.load("orders", "o1")
    assert row is not None
    assert row.value == {"v": 2}
    assert cache.get("o1") == {"v": 2}  # now from the store, and re-cached
    assert redis_client.get(value_key(cache, "o1")) is not None


def test_queued_delete_hides_the_stored_row_until_drained(
    backend: Backend, store: SQLStore, redis_client: redis.Redis
) -> None:
    cache = taskguard.connect(backend).cache("orders", ttl=60, strategy="write-behind", store=store)
    cache.set("o1", "v1")
    drain(backend, store, "orders")
    cache.delete("o1")
    assert cache.get("o1", "gone") == "gone"
    drain(backend, store, "orders")
    row = store.load("orders", "o1")
    assert row is not None
    assert row.deleted
    redis_client.delete(value_key(cache, "o1"))
    assert cache.get("o1", "gone") == "gone"


def test_redis_down_at_write_time_writes_the_store_directly(
    private_redis: RedisServer, store: SQLStore, tg_prefix: str
) -> None:
    backend = taskguard.connect(private_redis.url, prefix=tg_prefix).backend
    cache = taskguard.connect(backend).cache("orders", ttl=60, strategy="write-behind", store=store)
    cache.set("o1", "queued while up")
    private_redis.stop()
    cache.set("o1", "written while down")
    cache.set_many({"o2": 2, "o3": 3})
    cache.delete("o3")
    for key, expected in (("o1", "written while down"), ("o2", 2)):
        row = store.load("orders", key)
        assert row is not None
        assert row.value == expected
    tomb = store.load("orders", "o3")
    assert tomb is not None
    assert tomb.deleted
    assert cache.get("o1") == "written while down"  # reads fall back to the store
    assert cache.get_or_load("o9", lambda: "loader") == "loader"
    backend.close()


def test_write_through_store_failure_leaves_the_cache_untouched(
    backend: Backend, store: SQLStore, redis_client: redis.Redis
) -> None:
    cache = taskguard.connect(backend).cache("acct", ttl=60, strategy="write-through", store=store)
    cache.set("a1", {"balance": 10})
    before = redis_client.get(value_key(cache, "a1"))
    refuse_writes(store)  # every write now fails in the database
    with pytest.raises(StoreError):
        cache.set("a1", {"balance": 99})
    assert redis_client.get(value_key(cache, "a1")) == before
    assert cache.get("a1") == {"balance": 10}


def test_backpressure_write_through_keeps_the_newest_value(
    backend: Backend, store: SQLStore
) -> None:
    cache = taskguard.connect(backend).cache(
        "orders", ttl=60, strategy="write-behind", store=store, partitions=1, capacity=3
    )
    for i in range(10):
        cache.set("k", i)  # 0-2 queued, 3-9 written to the store directly
        assert cache.get("k") == i
    drain(backend, store, "orders")  # the queued 0-2 lose to the direct writes by version
    row = store.load("orders", "k")
    assert row is not None
    assert row.value == 9
    assert cache.get("k") == 9


def test_backpressure_raise_then_room_after_the_drain(backend: Backend, store: SQLStore) -> None:
    cache = taskguard.connect(backend).cache(
        "orders",
        ttl=60,
        strategy="write-behind",
        store=store,
        partitions=1,
        capacity=2,
        on_full="raise",
    )
    cache.set("a", 1)
    cache.set("b", 2)
    with pytest.raises(WriteBehindFull):
        cache.set("c", 3)
    assert cache.get("c") is None
    drain(backend, store, "orders")
    cache.set("c", 3)
    assert cache.get("c") == 3


def test_backpressure_block_waits_for_the_drain(backend: Backend, store: SQLStore) -> None:
    cache = taskguard.connect(backend).cache(
        "orders",
        ttl=60,
        strategy="write-behind",
        store=store,
        partitions=1,
        capacity=5,
        on_full="block",
        block_timeout=30,
    )
    with DrainPool(backend, store, namespaces=["orders"], workers=1, linger=0.01) as pool:  # type: ignore[arg-type]
        values: dict[str, Any] = {f"k{i}": i for i in range(60)}
        for key, value in values.items():
            cache.set(key, value)
        assert pool.wait_idle(30)
    rows = store.load_many("orders", list(values))
    assert {k: row.value for k, row in rows.items()} == values
