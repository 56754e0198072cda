"""taskguard.aio's write-behind cache and quotas, beside the sync API on one Redis and one
prefix (issue 16, part 6): a write queued by either API is read back by both and drained
by the one drain pool; the policies for a full queue and for Redis down are the sync
ones; a quota counts the calls of both."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import taskguard
import taskguard.aio
from taskguard import ConfigurationError, Quota, QuotaLimiter, RateLimited
from taskguard.aio import AsyncClient
from taskguard.drain import DrainPool
from taskguard.errors import WriteBehindFull
from taskguard.sinks.base import Loaded
from tests.unit.test_cache_fakes import MemoryStore

from .aio_support import Pair


def wb(client: Any, store: MemoryStore, **options: Any) -> Any:
    return client.cache("orders", ttl=60, strategy="write-behind", store=store, **options)


def test_writes_queued_by_either_api_are_read_by_both_and_drained(pair: Pair) -> None:
    store = MemoryStore()
    sync = wb(pair.sync, store, partitions=2)

    async def test(client: AsyncClient) -> None:
        orders = wb(client, store, partitions=2)
        await orders.set("a1", {"total": 1})
        await orders.set_many({"a2": [2], "a3": "three"})
        sync.set("s1", {"total": 4})
        assert store.writes == []  # queued, not written: the drain writes the store
        assert sync.get_many(["a1", "a2", "a3"]) == {"a1": {"total": 1}, "a2": [2], "a3": "three"}
        assert await orders.get("s1") == {"total": 4}
        await orders.delete("a3")  # a queued tombstone
        assert sync.get("a3", "gone") == "gone"
        # A copy that expired before the drain ran: the queued write is read, not the store.
        pair.inspect.delete(orders._calls.value_key("a1"))
        assert await orders.get("a1") == {"total": 1}
        assert store.loads == 0

    pair.run(test)
    with DrainPool(pair.sync, store, namespaces=["orders"], lease_ttl=10) as pool:
        assert pool.wait_idle(timeout=20)
    rows = {key: row for (ns, key), row in store.rows.items() if ns == "orders"}
    assert {k: r.value for k, r in rows.items() if not r.deleted} == {
        "a1": {"total": 1},
        "a2": [2],
        "s1": {"total": 4},
    }
    assert rows["a3"].deleted


def test_a_miss_reads_the_store_and_caches_its_row(pair: Pair) -> None:
    store = MemoryStore()
    store.rows["orders", "o1"] = Loaded({"total": 7}, 1)
    store.rows["orders", "o2"] = Loaded(None, 2, deleted=True)

    async def test(client: AsyncClient) -> None:
        orders = wb(client, store)
        assert await orders.get("o1") == {"total": 7}
        assert await orders.get("o2", "gone") == "gone"
        loads = store.loads
        assert await orders.get_many(["o1", "o2"]) == {"o1": {"total": 7}}
        assert store.loads == loads  # both cached (o2 as "no value")

    pair.run(test)
    assert wb(pair.sync, store).get("o1") == {"total": 7}


def test_cache_aside_with_a_store_reads_it_through(pair: Pair) -> None:
    store = MemoryStore()
    store.rows["users", "u1"] = Loaded({"name": "Ada"}, 1)

    async def test(client: AsyncClient) -> None:
        users = client.cache("users", ttl=60, store=store)
        assert await users.get("u1") == {"name": "Ada"}
        await users.set("u2", {"name": "Grace"})  # the cache only: cache-aside
        assert ("users", "u2") not in store.rows

    pair.run(test)
    assert pair.sync.cache("users", ttl=60).get("u1") == {"name": "Ada"}


def test_a_full_queue_follows_on_full(pair: Pair) -> None:
    store = MemoryStore()
    events: list[dict[str, Any]] = []

    def seen(sender: object, **fields: Any) -> None:
        events.append(fields)

    taskguard.signals.writebehind_backpressure.connect(seen, weak=False)

    async def test(client: AsyncClient) -> None:
        raising = wb(client, store, partitions=1, capacity=1, on_full="raise")
        await raising.set("a", 1)
        with pytest.raises(WriteBehindFull):
            await raising.set("b", 2)
        through = wb(client, store, partitions=1, capacity=1)  # write_through (default)
        await through.set("b", 2)
        assert store.rows["orders", "b"].value == 2  # straight to the store
        assert await through.get("b") == 2
        assert wb(pair.sync, store, partitions=1).get("b") == 2

    try:
        pair.run(test)
    finally:
        taskguard.signals.writebehind_backpressure.disconnect(seen)
    assert [e["policy"] for e in events] == ["raise", "write_through"]


def test_while_redis_is_down_writes_go_straight_to_the_store() -> None:
    store = MemoryStore()

    async def main() -> None:
        async with taskguard.aio.connect("redis://127.0.0.1:1/0", prefix="down") as client:
            orders = wb(client, store)
            await orders.set("o1", {"total": 3})
            await orders.delete("o2")
            assert await orders.get("o1") == {"total": 3}  # from the store: never older

    asyncio.run(main())
    assert store.rows["orders", "o1"].value == {"total": 3}
    assert store.rows["orders", "o2"].deleted


def test_the_partition_count_must_agree_with_the_sync_writers(pair: Pair) -> None:
    store = MemoryStore()
    wb(pair.sync, store, partitions=4).set("x", 1)

    async def test(client: AsyncClient) -> None:
        with pytest.raises(ConfigurationError, match="registered with 4 partitions"):
            await wb(client, store, partitions=2).set("y", 2)

    pair.run(test)


def test_write_through_and_write_around_stay_sync() -> None:
    client = taskguard.aio.connect("redis://localhost:1")
    with pytest.raises(ConfigurationError, match="write-through and write-around"):
        client.cache("w", ttl=5, strategy="write-through", store=MemoryStore())


def test_a_quota_counts_the_calls_of_both_apis(pair: Pair) -> None:
    sync = QuotaLimiter(pair.sync, Quota("3/day", key="{phone}", name="sms"))

    async def test(client: AsyncClient) -> None:
        sms = client.quota("sms", "3/day", key="{phone}")
        assert (await sms.try_acquire(key="+4411")).remaining == 2
        assert sync.try_acquire(key="+4411").remaining == 1
        assert await sms.acquire(key="+4411")
        with pytest.raises(RateLimited) as refused:
            await sms.acquire(key="+4411")
        assert 0 < refused.value.retry_after <= 86_400
        assert not sync.try_acquire(key="+4411").allowed
        # An allowance set at run time (either API's client) holds for both.
        pair.sync.set_quota("sms", "5/day", key="+4411")
        assert await sms.remaining(key="+4411") == 2
        assert sync.remaining(key="+4411") == 2

    pair.run(test)
