"""A read never returns a value older than an acknowledged write, on the write-behind
fallback paths, with Redis servers of the test's own: OOM at maxmemory with noeviction
(the write goes to the store, the older cached copy and dirty mark go), and Redis lost
mid-write and back with its data (this process reads the store until it has dropped
them). Also: what PostgreSQL cannot hold is refused at ``set()``, before it is queued."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import taskguard
from taskguard.cache import CacheService
from taskguard.drain import DrainPool
from taskguard.errors import UnstorableValue
from taskguard.sinks.sql import SQLStore
from taskguard.testing import wait_until
from taskguard.testing.servers import RedisServer

KEYS = 500


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLStore]:
    sql = SQLStore(f"sqlite:///{tmp_path / 'wb.db'}")
    yield sql
    sql.close()


@pytest.fixture
def pg_store(postgres_dsn: str) -> Iterator[SQLStore]:
    sql = SQLStore(postgres_dsn, table=f"tg_fallback_{uuid.uuid4().hex[:8]}")
    yield sql
    sql.drop_table()
    sql.close()


def wb(url: str, store: SQLStore, **options: object) -> CacheService:
    return taskguard.connect(url, prefix="tgf").cache(
        "orders", ttl=600, strategy="write-behind", store=store, **options
    )


def fill_until_oom(client: redis.Redis) -> None:
    """Write junk until Redis refuses with OOM, then lower maxmemory below what is used, so
    freed buffers cannot make room again."""
    n = 0
    try:
        while True:
            client.set(f"junk:{n}", b"x" * 20_000)
            n += 1
    except redis.exceptions.OutOfMemoryError:
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used - 1024 * 1024)


def test_oom_fallback_never_serves_an_older_value(store: SQLStore) -> None:
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 8 * 1024 * 1024)
        cache = wb(server.url, store)
        keys = [f"k{i}" for i in range(KEYS)]
        for key in keys:
            cache.set(key, "old")  # queued, cached, dirty
        fill_until_oom(client)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.set("one-more", b"x" * 20_000)
        for key in keys:
            cache.set(key, "new")  # OOM: straight to the store
        assert store.load("orders", "k0").value == "new"  # type: ignore[union-attr]
        stale = [key for key in keys if cache.get(key) != "new"]
        assert stale == []
        assert cache.get_many(keys) == dict.fromkeys(keys, "new")
        other = wb(server.url, store)  # another process reads the same
        assert [key for key in keys if other.get(key) != "new"] == []
        client.config_set("maxmemory", 0)
        with DrainPool(cache.backend, store, workers=1, linger=0.01) as pool:  # type: ignore[arg-type]
            assert pool.wait_idle(30)
        rows = store.load_many("orders", keys)
        assert {row.value for row in rows.values()} == {"new"}  # the queued "old" lost
        assert [key for key in keys if cache.get(key) != "new"] == []
        client.close()


def test_redis_lost_mid_write_then_back_with_its_data(store: SQLStore, tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    with RedisServer(appendonly=True, directory=str(tmp_path / "redis")) as server:
        cache = wb(server.url, store)
        cache.set("a", "old")  # queued and cached; kept across the restart (AOF)
        server.stop()
        cache.set("a", "new")  # straight to the store; the old copy cannot be dropped
        assert cache.get("a") == "new"
        server.start()
        other = wb(server.url, store)  # another process, before this one's next call
        assert other._ops.read("a").value == "old"  # the documented window

        def settled() -> bool:
            # Every read here is "new": from the store while its outage breaker still
            # fails calls fast, and after, while the old copy is there; its first call
            # through drops the old copy, and then the other process reads "new" too.
            assert cache.get("a") == "new"
            assert cache.get_many(["a"]) == {"a": "new"}
            return bool(other.get("a") == "new")

        wait_until(settled, timeout=20)
        assert cache.get("a") == "new"


def test_postgresql_refusals_happen_at_set(
    pg_store: SQLStore, redis_url: str, tg_prefix: str, redis_client: redis.Redis
) -> None:
    cache = taskguard.connect(redis_url, prefix=tg_prefix).cache(
        "orders", ttl=60, strategy="write-behind", store=pg_store, partitions=1
    )
    for key, value in (("k", "a\x00b"), ("a\x00b", 1), ("x" * 3000, 1), ("k", float("inf"))):
        with pytest.raises(UnstorableValue):
            cache.set(key, value)
    assert redis_client.xlen(cache.backend.keys.cache_stream("orders", 0)) == 0
    cache.backend.close()
