"""The drain finds queued writes from the streams themselves: after FLUSHDB or a restart
without persistence (Redis servers of the test's own), and after the namespace registry
alone is lost, a long-lived writer's records still reach the store, and the metrics count
them while they wait."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import taskguard
from taskguard.backend import RedisBackend
from taskguard.cache import CacheService
from taskguard.drain import DrainPool, metrics
from taskguard.sinks.sql import SQLStore
from taskguard.testing import wait_until
from taskguard.testing.servers import RedisServer
from tests.unit.test_cache_fakes import MemoryStore

KEYS = 40


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLStore]:
    sql = SQLStore(f"sqlite:///{tmp_path / 'wb.db'}")
    yield sql
    sql.close()


def connect(url: str, prefix: str) -> RedisBackend:
    backend = taskguard.connect(url, prefix=prefix).backend
    assert isinstance(backend, RedisBackend)
    return backend


def writer(backend: RedisBackend, store: Any, partitions: int = 4) -> CacheService:
    return taskguard.connect(backend).cache(
        "orders", ttl=600, strategy="write-behind", store=store, partitions=partitions
    )


def write_all(cache: CacheService, tag: str) -> dict[str, str]:
    values = {f"k{i}": f"{tag}-{i}" for i in range(KEYS)}
    for key, value in values.items():
        cache.set(key, value)
    return values


def drained(backend: RedisBackend, store: SQLStore, namespaces: list[str] | None) -> None:
    with DrainPool(backend, store, namespaces=namespaces, workers=1, linger=0.01) as pool:
        assert pool.wait_idle(30), "the drain did not empty the queue"
        assert pool.metrics().backlog == 0


def stored(store: SQLStore) -> dict[str, Any]:
    rows = store.load_many("orders", [f"k{i}" for i in range(KEYS)])
    return {key: row.value for key, row in rows.items()}


@pytest.mark.parametrize("named", [True, False], ids=["named", "every-namespace"])
@pytest.mark.parametrize("loss", ["flushdb", "restart"])
def test_writes_queued_after_redis_lost_its_data_reach_the_store(
    private_redis: RedisServer, store: SQLStore, loss: str, named: bool
) -> None:
    backend = connect(private_redis.url, "tgd")
    cache = writer(backend, store)  # registers "orders" once, at construction
    cache.set("k0", "before")
    if loss == "flushdb":
        redis.Redis.from_url(private_redis.url).flushdb()
    else:
        private_redis.restart()  # no persistence: everything is gone
    values = write_all(cache, "after")  # the same long-lived writer carries on
    assert metrics(backend, "orders").backlog == KEYS
    assert metrics(backend).backlog == KEYS
    drained(connect(private_redis.url, "tgd"), store, ["orders"] if named else None)
    assert stored(store) == values
    assert metrics(backend, "orders").backlog == 0
    backend.close()


def test_a_lost_registry_hides_no_queued_write(
    redis_url: str, tg_prefix: str, redis_client: redis.Redis, store: SQLStore
) -> None:
    backend = connect(redis_url, tg_prefix)
    cache = writer(backend, store, partitions=8)
    values = write_all(cache, "v")
    redis_client.delete(backend.keys.write_behind_namespaces())  # only the registry goes
    assert metrics(backend, "orders").backlog == KEYS
    drained(backend, store, None)
    assert stored(store) == values
    backend.close()


def test_pool_metrics_count_the_streams_not_the_registry(
    redis_url: str, tg_prefix: str, redis_client: redis.Redis
) -> None:
    backend = connect(redis_url, tg_prefix)
    failing = MemoryStore()
    failing.fail = True  # nothing is written: the backlog stays
    cache = writer(backend, MemoryStore())
    write_all(cache, "v")
    redis_client.delete(backend.keys.write_behind_namespaces())
    pool = DrainPool(backend, failing, namespaces=["orders"], workers=1, backoff_max=0.5)
    pool.start()
    try:
        wait_until(lambda: pool.metrics().backlog == KEYS, timeout=20)
        wait_until(pool.held, timeout=20)  # it leases the unregistered partitions
    finally:
        pool.stop(timeout=0.5)  # the batch waiting for the failing store stays pending
    backend.close()


def test_a_long_lived_writer_registers_its_namespace_again(
    redis_url: str, tg_prefix: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskguard.cache import writebehind

    backend = connect(redis_url, tg_prefix)
    cache = writer(backend, MemoryStore(), partitions=4)
    where = backend.keys.write_behind_namespaces()
    redis_client.delete(where)
    cache.set("a", 1)
    assert redis_client.hget(where, "orders") is None  # not on every write...
    monkeypatch.setattr(writebehind, "REGISTER_EVERY", 0.0, raising=False)
    cache.set("a", 2)
    assert redis_client.hget(where, "orders") == b"4"  # ...but again after a while
    backend.close()
