"""Write-behind writes with ``replicas``: the scripts and ``WAIT`` go in one round trip,
and a write fewer replicas acknowledged goes straight to the store too, then is settled,
as during an outage (docs/outages.md). The test Redis has no replica, so ``replicas=1``
is never met here: every write takes the store path, and is still read back, and the
drain's later write of its queued entry loses to the direct one. The path where the
replicas do acknowledge, across a real failover, is tests/integration/test_failover_writebehind.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from taskguard import signals
from taskguard.aio import AsyncClient
from taskguard.cache import CacheService
from taskguard.cache.records import partition_of, version_of
from taskguard.drain import DrainPool
from tests.unit.test_cache_fakes import MemoryStore

from .aio_support import Pair

#: Short: with no replica, every WAIT runs to its timeout.
TIMEOUT = 0.01


@pytest.fixture(autouse=True)
def _no_replica(pair: Pair) -> None:
    if int(pair.inspect.info("replication").get("connected_slaves", 0)) > 0:
        pytest.skip("the test Redis has a replica: WAIT 1 would be met")


def wb(client: Any, store: MemoryStore, **options: Any) -> Any:
    return client.cache("orders", ttl=60, strategy="write-behind", store=store, **options)


def waits(inspect: redis.Redis) -> int:
    """``WAIT`` calls the server has run (every client's: it only grows)."""
    stats = inspect.info("commandstats").get("cmdstat_wait")
    return int(stats["calls"]) if stats else 0


def queued_ids(cache: CacheService, key: str, inspect: redis.Redis) -> list[str]:
    stream = cache.backend.keys.cache_stream(cache.namespace, partition_of(key, cache.partitions))
    entries: list[tuple[bytes, Any]] = inspect.xrange(stream)  # type: ignore[assignment]
    return [entry_id.decode() for entry_id, _ in entries]


def test_unacknowledged_writes_go_to_the_store_and_are_settled(pair: Pair) -> None:
    store = MemoryStore()
    cache = wb(pair.sync, store, replicas=1, replica_timeout=TIMEOUT)
    before = waits(pair.inspect)
    cache.set("a", {"n": 1})
    cache.set_many({"b": 2, "c": [3]})
    assert waits(pair.inspect) - before >= 2  # one WAIT per call, not per key
    rows = {key: row for (ns, key), row in store.rows.items() if ns == "orders"}
    assert {key: row.value for key, row in rows.items()} == {"a": {"n": 1}, "b": 2, "c": [3]}
    for key, row in rows.items():
        # Queued too (the script ran), but the direct write ranks above the entry, and
        # the settle dropped the key's cached copy and dirty mark.
        [entry] = queued_ids(cache, key, pair.inspect)
        assert row.version > version_of(entry)
        assert pair.inspect.get(cache._ops.value_key(key)) is None
    assert cache.get_many(["a", "b", "c"]) == {"a": {"n": 1}, "b": 2, "c": [3]}
    with DrainPool(pair.sync, store, namespaces=["orders"], lease_ttl=10) as pool:
        assert pool.wait_idle(timeout=20)
    assert {k: r.version for (ns, k), r in store.rows.items() if ns == "orders"} == {
        key: row.version for key, row in rows.items()
    }  # the drain's older versions lost


def test_without_replicas_nothing_waits_and_nothing_reaches_the_store(pair: Pair) -> None:
    store = MemoryStore()
    cache = wb(pair.sync, store)
    cache.set("a", 1)
    cache.set_many({"b": 2, "c": 3})
    assert store.writes == []  # queued only: the drain writes the store
    assert cache.get_many(["a", "b", "c"]) == {"a": 1, "b": 2, "c": 3}


def test_asyncio_unacknowledged_writes_go_to_the_store_and_are_settled(pair: Pair) -> None:
    store = MemoryStore()
    sync = wb(pair.sync, store)

    async def test(client: AsyncClient) -> None:
        orders = wb(client, store, replicas=1, replica_timeout=TIMEOUT)
        before = waits(pair.inspect)
        await orders.set("a", {"n": 1})
        await orders.set_many({"b": 2, "c": [3]})
        assert waits(pair.inspect) - before >= 2
        assert await orders.get_many(["a", "b", "c"]) == {"a": {"n": 1}, "b": 2, "c": [3]}

    pair.run(test)
    rows = {key: row for (ns, key), row in store.rows.items() if ns == "orders"}
    assert {key: row.value for key, row in rows.items()} == {"a": {"n": 1}, "b": 2, "c": [3]}
    for key, row in rows.items():
        [entry] = queued_ids(sync, key, pair.inspect)
        assert row.version > version_of(entry)
    assert sync.get_many(["a", "b", "c"]) == {"a": {"n": 1}, "b": 2, "c": [3]}


def test_a_write_that_waited_for_room_still_checks_its_replicas(pair: Pair) -> None:
    store = MemoryStore()
    cache = wb(
        pair.sync,
        store,
        replicas=1,
        replica_timeout=TIMEOUT,
        partitions=1,
        capacity=1,
        on_full="block",
        block_timeout=5,
    )
    cache.set("a", 1)  # fills the partition's queue (and, unacknowledged, the store)
    stream = cache.backend.keys.cache_stream("orders", 0)
    refused: list[str] = []

    def make_room(sender: Any, key: str, **kwargs: Any) -> None:
        refused.append(key)
        pair.inspect.xtrim(stream, maxlen=0)  # as a drain would: the retry finds room

    signals.writebehind_backpressure.connect(make_room, weak=False)
    try:
        cache.set("b", 2)
    finally:
        signals.writebehind_backpressure.disconnect(make_room)
    assert refused == ["b"]
    assert [pair.inspect.xlen(stream)] == [1]  # b was queued on the retry...
    rows = {k: r for (ns, k), r in store.rows.items() if ns == "orders"}
    assert {k: r.value for k, r in rows.items()} == {"a": 1, "b": 2}  # ...and is in the store
    assert pair.inspect.hget(cache.backend.keys.cache_dirty("orders", 0), "b") is None
