"""Each cache strategy on a real Redis, with an in-memory store (a fake of our Store
protocol): reads, writes, deletes, batches, negative caching, single flight, early refresh,
the write-behind queue and its backpressure policies. The cache needs Redis: these run on
the contract's Redis only. The Redis-down fallbacks are in tests/unit/test_cache_offline.py.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import taskguard
from taskguard import signals
from taskguard.backend.base import Backend
from taskguard.cache import CacheService
from taskguard.cache.records import partition_of, version_of
from taskguard.errors import StoreError, WriteBehindFull
from taskguard.sinks import Loaded, Record
from taskguard.testing import wait_until
from tests.unit.test_cache_fakes import MemoryStore

from .harness import REDIS_ONLY, TOPOLOGIES, Contract

pytestmark = [REDIS_ONLY, TOPOLOGIES]


@pytest.fixture
def backend(contract: Contract) -> Backend:
    return contract.backend


@pytest.fixture
def redis_client(contract: Contract) -> Any:
    """The contract's own client: under Cluster and Sentinel, the root fixture's server is
    not the one under test."""
    return contract.client


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


class Loader:
    """Counts its calls and returns the next of ``values``."""

    def __init__(self, *values: Any) -> None:
        self.values = list(values)
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return self.values[min(self.calls, len(self.values)) - 1]


def raw(cache: CacheService, key: str, client: Any) -> bytes | None:
    value: bytes | None = client.get(cache._ops.value_key(key))
    return value


def stream_entries(cache: CacheService, key: str, client: Any) -> list[Any]:
    stream = cache.backend.keys.cache_stream(cache.namespace, partition_of(key, cache.partitions))
    return list(client.xrange(stream))


def dirty_id(cache: CacheService, key: str, client: Any) -> bytes | None:
    dirty = cache.backend.keys.cache_dirty(cache.namespace, partition_of(key, cache.partitions))
    found: bytes | None = client.hget(dirty, key)
    return found


# ---------------------------------------------------------------- cache-aside


def test_cache_aside_get_set_delete_invalidate(backend: Backend, redis_client: Any) -> None:
    cache = taskguard.connect(backend).cache("users", ttl=60)
    assert cache.get("1") is None
    assert cache.get("1", "none") == "none"
    cache.set("1", {"name": "Ada"})
    assert cache.get("1") == {"name": "Ada"}
    cache.invalidate("1")
    assert raw(cache, "1", redis_client) is None
    cache.set("1", "x")
    cache.delete("1")
    assert cache.get("1") is None
    with pytest.raises(ValueError, match="use delete"):
        cache.set("1", None)


def test_get_or_load_caches_the_loaded_value(backend: Backend) -> None:
    cache = taskguard.connect(backend).cache("users", ttl=60, early_refresh=0)
    loader = Loader({"v": 1}, {"v": 2})
    assert cache.get_or_load("k", loader) == {"v": 1}
    assert cache.get_or_load("k", loader) == {"v": 1}
    assert cache.get("k") == {"v": 1}
    assert loader.calls == 1


def test_negative_cache_remembers_a_missing_value(backend: Backend) -> None:
    cache = taskguard.connect(backend).cache("users", ttl=60, negative_ttl=30)
    loader = Loader(None, "late")
    assert cache.get_or_load("ghost", loader) is None
    assert cache.get_or_load("ghost", loader) is None
    assert cache.get("ghost", "default") == "default"
    assert loader.calls == 1
    cache.set("ghost", "now")  # a write replaces the negative entry
    assert cache.get_or_load("ghost", loader) == "now"


def test_negative_ttl_zero_disables_negative_caching(backend: Backend) -> None:
    cache = taskguard.connect(backend).cache("users", ttl=60, negative_ttl=0)
    loader = Loader(None, None, "found")
    assert cache.get_or_load("ghost", loader) is None
    assert cache.get_or_load("ghost", loader) is None
    assert cache.get_or_load("ghost", loader) == "found"
    assert loader.calls == 3


def test_negative_entries_expire_after_negative_ttl(backend: Backend, redis_client: Any) -> None:
    cache = taskguard.connect(backend).cache("users", ttl=60, negative_ttl=5, jitter=0)
    cache.get_or_load("ghost", lambda: None)
    assert 0 < redis_client.pttl(cache._ops.value_key("ghost")) <= 5_000


def test_a_failing_loader_releases_the_flight_lock(backend: Backend) -> None:
    cache = taskguard.connect(backend).cache("users", ttl=60, flight_wait=30)

    def boom() -> Any:
        raise RuntimeError("db down")

    with pytest.raises(RuntimeError, match="db down"):
        cache.get_or_load("k", boom)
    # Were the lock still held, this call would wait 30 s before loading.
    started = time.monotonic()
    assert cache.get_or_load("k", lambda: "ok") == "ok"
    assert time.monotonic() - started < 10


def test_a_waiter_loads_itself_after_flight_wait(backend: Backend, redis_client: Any) -> None:
    cache = taskguard.connect(backend).cache("users", ttl=60, flight_wait=0.05, flight_ttl=30)
    flight = backend.keys.cache_flight("users", partition_of("k", 8), "k")
    redis_client.set(flight, "someone-else", px=30_000)  # a loader that hangs
    assert cache.get_or_load("k", lambda: "mine") == "mine"
    assert redis_client.get(flight) == b"someone-else"  # another's lock is not ours to free


def test_early_refresh_reloads_a_slow_key_before_it_expires(backend: Backend) -> None:
    # Loads that took 10 s, a copy with ~60 s left, an eager beta and a draw near 1:
    # -10 * 50 * log(1 - 0.99) = 2302 s >= 60 s, so this reader refreshes.
    class AlmostOne(random.Random):
        def random(self) -> float:
            return 0.99

    cache = taskguard.connect(backend).cache("users", ttl=60, early_refresh=50, rng=AlmostOne())
    cache._ops.put_many([("k", b"=10000:" + b'"old"', 60_000)])
    assert cache.get_or_load("k", lambda: "new") == "new"
    assert cache.get("k") == "new"
    calm = taskguard.connect(backend).cache("calm", ttl=60, early_refresh=0)
    calm._ops.put_many([("k", b"=10000:" + b'"old"', 60_000)])
    assert calm.get_or_load("k", lambda: "new") == "old"


def test_cache_aside_with_a_store_reads_through(backend: Backend, store: MemoryStore) -> None:
    store.rows["users", "1"] = Loaded("ada", 1)
    cache = taskguard.connect(backend).cache("users", ttl=60, store=store)
    assert cache.get("1") == "ada"
    assert cache.get("1") == "ada"
    assert store.loads == 1
    assert cache.get("2") is None
    assert cache.get("2") is None
    assert store.loads == 2


def test_get_many_and_set_many(backend: Backend, store: MemoryStore) -> None:
    cache = taskguard.connect(backend).cache("users", ttl=60, store=store)
    cache.set_many({"a": 1, "b": 2})
    store.rows["users", "c"] = Loaded(3, 1)
    store.rows["users", "d"] = Loaded(None, 2, deleted=True)
    assert cache.get_many(["a", "b", "c", "d", "e", "a"]) == {"a": 1, "b": 2, "c": 3}
    loads = store.loads
    assert cache.get_many(["c", "d", "e"]) == {"c": 3}  # cached, negatives included
    assert store.loads == loads


# ---------------------------------------------------------------- write-through / around


def test_write_through_writes_the_store_then_the_cache(
    backend: Backend, store: MemoryStore
) -> None:
    cache = taskguard.connect(backend).cache("acct", ttl=60, strategy="write-through", store=store)
    cache.set("1", {"balance": 5})
    assert store.rows["acct", "1"].value == {"balance": 5}
    assert cache.get("1") == {"balance": 5}
    assert store.loads == 0
    cache.set_many({"2": 2, "3": 3})
    assert len(store.writes[-1]) == 2  # one transaction
    assert cache.get_many(["2", "3"]) == {"2": 2, "3": 3}


def test_write_through_store_failure_leaves_the_cache_untouched(
    backend: Backend, store: MemoryStore
) -> None:
    cache = taskguard.connect(backend).cache("acct", ttl=60, strategy="write-through", store=store)
    cache.set("1", "v1")
    store.fail = True
    with pytest.raises(StoreError):
        cache.set("1", "v2")
    with pytest.raises(StoreError):
        cache.delete("1")
    assert cache.get("1") == "v1"


def test_write_around_invalidates_and_reads_back_from_the_store(
    backend: Backend, store: MemoryStore, redis_client: Any
) -> None:
    cache = taskguard.connect(backend).cache("acct", ttl=60, strategy="write-around", store=store)
    cache.set("1", "v1")
    assert raw(cache, "1", redis_client) is None
    assert cache.get("1") == "v1"  # loaded and cached
    assert raw(cache, "1", redis_client) is not None
    cache.set("1", "v2")
    assert cache.get("1") == "v2"


def test_delete_writes_a_tombstone_then_drops_the_copy(
    backend: Backend, store: MemoryStore
) -> None:
    cache = taskguard.connect(backend).cache("acct", ttl=60, strategy="write-through", store=store)
    cache.set("1", "v1")
    cache.delete("1")
    assert store.rows["acct", "1"].deleted
    assert cache.get("1", "gone") == "gone"


# ---------------------------------------------------------------- write-behind


def wb(backend: Backend, store: MemoryStore, **options: Any) -> CacheService:
    return taskguard.connect(backend).cache(
        "orders", ttl=60, strategy="write-behind", store=store, **options
    )


def test_write_behind_set_queues_caches_and_marks_dirty(
    backend: Backend, store: MemoryStore, redis_client: Any
) -> None:
    cache = wb(backend, store)
    cache.set("o1", {"total": 9})
    assert cache.get("o1") == {"total": 9}
    [(entry_id, fields)] = stream_entries(cache, "o1", redis_client)
    assert fields == {b"k": b"o1", b"v": b'{"total":9}', b"c": b"json"}
    assert dirty_id(cache, "o1", redis_client) == entry_id
    assert store.writes == []  # the drain writes the store, later
    cache.delete("o1")
    _, (delete_id, fields) = stream_entries(cache, "o1", redis_client)
    assert fields == {b"k": b"o1", b"d": b"1", b"c": b"json"}
    assert dirty_id(cache, "o1", redis_client) == delete_id
    assert version_of(delete_id) > version_of(entry_id)
    assert cache.get("o1", "gone") == "gone"


def test_write_behind_read_miss_uses_the_queued_write_not_the_store(
    backend: Backend, store: MemoryStore, redis_client: Any
) -> None:
    cache = wb(backend, store)
    store.rows["orders", "o1"] = Loaded("v1 (drained)", 1)
    cache.set("o1", "v2")
    redis_client.delete(cache._ops.value_key("o1"))  # the copy expired before the drain ran
    assert cache.get("o1") == "v2"
    assert cache.get_many(["o1"]) == {"o1": "v2"}
    assert cache.get_or_load("o1", lambda: "loader") == "v2"
    assert store.loads == 0
    # A row loaded before the write must not be cached over it while it is queued.
    assert not cache._ops.fill("o1", b'=0:"v1 (drained)"', 60_000, only_if_absent=True)
    assert raw(cache, "o1", redis_client) is None


def test_write_behind_queued_delete_reads_as_missing(backend: Backend, store: MemoryStore) -> None:
    cache = wb(backend, store)
    store.rows["orders", "o1"] = Loaded("old", 1)
    cache.delete("o1")
    assert cache.get("o1", "gone") == "gone"
    assert store.loads == 0


def test_write_behind_set_many_spreads_over_partitions(
    backend: Backend, store: MemoryStore, redis_client: Any
) -> None:
    cache = wb(backend, store, partitions=4)
    values = {f"k{i}": i for i in range(40)}
    cache.set_many(values)
    assert cache.get_many(values) == values
    lengths = [
        redis_client.xlen(backend.keys.cache_stream("orders", p)) for p in range(cache.partitions)
    ]
    assert sum(lengths) == 40
    assert min(lengths) > 0


def test_write_behind_read_after_drain_falls_through_to_the_store(
    backend: Backend, store: MemoryStore, redis_client: Any
) -> None:
    cache = wb(backend, store)
    cache.set("o1", "v1")
    [(entry_id, _)] = stream_entries(cache, "o1", redis_client)
    # What the drain does after committing: write the row, clear the mark, delete the entry.
    store.write("orders", [Record("o1", "v1", version_of(entry_id))])
    dirty = backend.keys.cache_dirty("orders", partition_of("o1", cache.partitions))
    redis_client.hdel(dirty, "o1")
    redis_client.xdel(backend.keys.cache_stream("orders", partition_of("o1", 8)), entry_id)
    redis_client.delete(cache._ops.value_key("o1"))
    assert cache.get("o1") == "v1"
    assert store.loads == 1
    assert cache.get("o1") == "v1"  # re-cached
    assert store.loads == 1


# ---------------------------------------------------------------- backpressure


@pytest.fixture
def backpressure() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def receiver(sender: Any, signal: Any, **kwargs: Any) -> None:
        seen.append(kwargs)

    signals.writebehind_backpressure.connect(receiver, weak=False)
    yield seen
    signals.writebehind_backpressure.disconnect(receiver)


def test_full_queue_raise_changes_nothing(
    backend: Backend, store: MemoryStore, redis_client: Any, backpressure: list[dict[str, Any]]
) -> None:
    cache = wb(backend, store, partitions=1, capacity=2, on_full="raise")
    cache.set("a", 1)
    cache.set("b", 2)
    with pytest.raises(WriteBehindFull) as caught:
        cache.set("a", 3)
    assert (caught.value.namespace, caught.value.backlog) == ("orders", 2)
    assert cache.get("a") == 1
    assert len(stream_entries(cache, "a", redis_client)) == 2
    assert store.writes == []
    assert backpressure == [{"namespace": "orders", "key": "a", "backlog": 2, "policy": "raise"}]


def test_full_queue_write_through_writes_the_store_and_reads_stay_fresh(
    backend: Backend, store: MemoryStore, redis_client: Any, backpressure: list[dict[str, Any]]
) -> None:
    cache = wb(backend, store, partitions=1, capacity=1)  # on_full="write_through"
    cache.set("a", "v1")
    [(queued_id, _)] = stream_entries(cache, "a", redis_client)
    cache.set("a", "v2")
    row = store.rows["orders", "a"]
    assert row.value == "v2"
    assert row.version > version_of(queued_id)
    assert dirty_id(cache, "a", redis_client) is None
    assert cache.get("a") == "v2"  # from the store: not v1 from the queue
    # The drain's later write of the queued v1 loses to the direct write.
    store.write("orders", [Record("a", "v1", version_of(queued_id))])
    assert store.rows["orders", "a"].value == "v2"
    assert [s["policy"] for s in backpressure] == ["write_through"]


def test_full_queue_write_through_keeps_a_newer_queued_write(
    backend: Backend, store: MemoryStore, redis_client: Any
) -> None:
    cache = wb(backend, store, partitions=1, capacity=1)
    cache.set("a", "v1")
    [(queued_id, _)] = stream_entries(cache, "a", redis_client)
    # The queued write is newer than a direct write at version 0-1: settle must keep it.
    assert not cache._ops.settle("a", version_of("0-1"))
    assert dirty_id(cache, "a", redis_client) == queued_id
    assert cache.get("a") == "v1"


def test_full_queue_block_waits_for_room(
    backend: Backend, store: MemoryStore, redis_client: Any, backpressure: list[dict[str, Any]]
) -> None:
    cache = wb(backend, store, partitions=1, capacity=1, on_full="block", block_timeout=30)
    cache.set("a", 1)
    stream = backend.keys.cache_stream("orders", 0)

    def drain_once_blocked() -> None:
        # The backpressure signal goes out as the writer finds the queue full, then waits.
        wait_until(lambda: backpressure, timeout=30)
        for entry_id, _ in redis_client.xrange(stream):
            redis_client.xdel(stream, entry_id)

    drainer = threading.Thread(target=drain_once_blocked)
    drainer.start()
    cache.set("b", 2)
    drainer.join()
    assert [s["policy"] for s in backpressure] == ["block"]
    assert [f[b"k"] for _, f in redis_client.xrange(stream)] == [b"b"]
    assert store.writes == []


def test_full_queue_block_raises_after_block_timeout(backend: Backend, store: MemoryStore) -> None:
    cache = wb(backend, store, partitions=1, capacity=1, on_full="block", block_timeout=0.05)
    cache.set("a", 1)
    with pytest.raises(WriteBehindFull):
        cache.set("b", 2)
    assert cache.get("b") is None
