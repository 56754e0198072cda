"""The drain pool against real Redis and real databases (SQLite file, PostgreSQL).

The producer side is written by hand, exactly as the write-behind contract says the cache
writes it (XADD k/v/c or k/d/c, HSET dirty key id, HSETNX the namespace registry), so these
tests check the drain alone.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text

import taskguard
from taskguard import signals
from taskguard.backend import RedisBackend
from taskguard.cache.records import partition_of, version_of
from taskguard.drain import DrainPool, dead_letters, metrics, requeue_dead_letters
from taskguard.drain.partition import GROUP, Partition, ensure_groups
from taskguard.errors import BackendError
from taskguard.sinks.sql import SQLStore

NS = "users"
P = 8


class Producer:
    """Writes the queue as the cache would."""

    def __init__(self, backend: RedisBackend, namespace: str = NS, partitions: int = P) -> None:
        self.backend = backend
        self.client: redis.Redis = backend.client
        self.namespace = namespace
        self.partitions = partitions
        self.expected: dict[str, Any] = {}
        self.client.hsetnx(backend.keys.write_behind_namespaces(), namespace, partitions)

    def put(self, key: str, value: Any) -> str:
        return self._queue(key, {"k": key, "v": json.dumps(value), "c": "json"}, value)

    def delete(self, key: str) -> str:
        return self._queue(key, {"k": key, "d": "1", "c": "json"}, None)

    def _queue(self, key: str, fields: dict[str, str], value: Any) -> str:
        p = partition_of(key, self.partitions)
        keys = self.backend.keys
        sid = self.client.xadd(keys.cache_stream(self.namespace, p), fields).decode()
        self.client.hset(keys.cache_dirty(self.namespace, p), key, sid)
        self.expected[key] = value
        return sid

    def dirty(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for p in range(self.partitions):
            raw = self.client.hgetall(self.backend.keys.cache_dirty(self.namespace, p))
            found.update({k.decode(): v.decode() for k, v in raw.items()})
        return found


def stored(store: SQLStore, keys: list[str], namespace: str = NS) -> dict[str, Any]:
    """Live rows by key (tombstones read as None)."""
    rows = store.load_many(namespace, keys)
    return {k: (None if row.deleted else row.value) for k, row in rows.items()}


#: Runs a test on one Redis server, on Redis Cluster (partitions spread over the masters,
#: found by a SCAN of each) and on a master found through Sentinel.
TOPOLOGIES = pytest.mark.parametrize("backend", ["cluster", "sentinel"], indirect=True)
_TOPOLOGY_URLS = {"cluster": "redis_cluster_url", "sentinel": "redis_sentinel_url"}


@pytest.fixture
def backend(request: pytest.FixtureRequest, tg_prefix: str) -> Iterator[RedisBackend]:
    topology = getattr(request, "param", "single")
    url: str = request.getfixturevalue(_TOPOLOGY_URLS.get(topology, "redis_url"))
    found = taskguard.connect(url, prefix=tg_prefix).backend
    assert isinstance(found, RedisBackend)
    yield found
    if topology != "single":  # tg_prefix cleans the single server only
        for key in found.client.scan_iter(match=f"{tg_prefix}:*", count=500):
            found.client.unlink(key)
    found.close()


@pytest.fixture
def producer(backend: RedisBackend) -> Producer:
    return Producer(backend)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLStore]:
    store = SQLStore(f"sqlite:///{tmp_path / 'drain.db'}")
    yield store
    store.close()


@pytest.fixture
def pg_store(postgres_dsn: str) -> Iterator[SQLStore]:
    store = SQLStore(postgres_dsn, table=f"tgdrain_{uuid.uuid4().hex[:10]}")
    store.create_table()
    yield store
    store.drop_table()
    store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> SQLStore:
    name = "sqlite_store" if request.param == "sqlite" else "pg_store"
    found: SQLStore = request.getfixturevalue(name)
    return found


def test_everything_is_written_with_the_latest_value_and_dirty_marks_cleared(
    backend: RedisBackend, producer: Producer, store: SQLStore
) -> None:
    for i in range(3000):
        producer.put(f"user:{i % 400}", {"n": i})
    for i in range(0, 400, 7):
        producer.delete(f"user:{i}")
    with DrainPool(backend, store, workers=3, batch_size=250) as pool:
        assert pool.wait_idle(60)
        found = pool.metrics()
    keys = sorted(producer.expected)
    assert stored(store, keys) == producer.expected
    assert producer.dirty() == {}
    assert found.backlog == 0
    assert found.pending == 0
    assert found.records_acked == 3000 + len(range(0, 400, 7))
    assert found.rows_written <= found.records_acked
    assert found.coalescing_ratio >= 1.0
    assert found.dead_letters == 0


@TOPOLOGIES
def test_on_cluster_and_sentinel_everything_is_written(
    backend: RedisBackend, producer: Producer, sqlite_store: SQLStore
) -> None:
    # On Cluster the 8 partitions' streams sit in 8 slots, over the masters: discovery
    # scans every master, and each read or ack goes to its partition's node.
    for i in range(1000):
        producer.put(f"user:{i % 200}", {"n": i})
    for i in range(0, 200, 7):
        producer.delete(f"user:{i}")
    with DrainPool(backend, sqlite_store, workers=3, batch_size=250) as pool:
        assert pool.wait_idle(60)
        found = pool.metrics()
    assert stored(sqlite_store, sorted(producer.expected)) == producer.expected
    assert producer.dirty() == {}
    assert (found.backlog, found.pending, found.dead_letters) == (0, 0, 0)
    assert found.records_acked == 1000 + len(range(0, 200, 7))


def test_the_ack_keeps_a_dirty_mark_that_names_a_newer_write(
    backend: RedisBackend, producer: Producer
) -> None:
    first = producer.put("k", 1)
    newer = producer.put("k", 2)
    partition = Partition.of(backend.keys, NS, partition_of("k", P))
    partition.ensure_group(backend)
    # The drain acknowledges a batch holding only the first write: the mark stays.
    backend.client.xreadgroup(GROUP, "c", {partition.stream: ">"}, count=1)
    assert partition.ack(backend, {"k": first}, [first]) == 1
    assert producer.dirty() == {"k": newer}
    assert backend.client.xlen(partition.stream) == 1
    backend.client.xreadgroup(GROUP, "c", {partition.stream: ">"}, count=1)
    assert partition.ack(backend, {"k": newer}, [newer]) == 1
    assert producer.dirty() == {}


def test_a_started_pool_holds_its_share_before_its_threads_read(
    backend: RedisBackend, producer: Producer, sqlite_store: SQLStore
) -> None:
    # The first leases are taken in start(), before the drain threads run: handed out by
    # the manager while the threads already parsed their first batches, 8 partitions
    # took about 100 ms, and the first reads found one partition each.
    producer.put("k1", 1)  # registers the namespace and its P partitions
    pool = DrainPool(backend, sqlite_store, workers=2)
    try:
        pool.start()
        assert len(pool.held()) == P  # at once: no manager tick waited for
        assert sorted(pool._held.values()) == [0] * (P // 2) + [1] * (P // 2)
        assert pool.wait_idle(30)
    finally:
        pool.stop()
    assert stored(sqlite_store, ["k1"]) == {"k1": 1}


@pytest.mark.parametrize("backend", ["single", "cluster"], indirect=True)
def test_the_manager_renews_every_lease_it_holds_and_drops_one_taken_from_it(
    backend: RedisBackend, producer: Producer, sqlite_store: SQLStore
) -> None:
    # The leases are renewed in one pipeline (one round trip per node on a cluster); a
    # lease another pool holds now is dropped, and only that one.
    producer.put("k1", 1)
    ttl = 3.0  # a manager tick every second: a lease outlives two missed ticks
    pool = DrainPool(backend, sqlite_store, workers=2, lease_ttl=ttl)
    lost: list[int] = []
    drop = pool._drop

    def on_lost(partition: Partition) -> None:
        lost.append(partition.index)
        drop(partition)

    pool._drop = on_lost  # type: ignore[method-assign]
    try:
        pool.start()
        assert len(pool.held()) == P
        stolen = backend.keys.drain_lease(NS, 3)
        backend.client.set(stolen, "another-pool", px=60_000)
        began = time.monotonic()
        deadline = began + 20
        while not lost or time.monotonic() < began + 2 * ttl:  # past every lease's first ttl
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert lost == [3]
        owners = [backend.client.get(backend.keys.drain_lease(NS, p)) for p in range(P)]
        assert owners == [b"another-pool" if p == 3 else pool.owner.encode() for p in range(P)]
    finally:
        pool.stop()


def test_groups_are_created_in_one_pipeline_and_its_errors_are_taskguards(
    backend: RedisBackend, caplog: pytest.LogCaptureFixture
) -> None:
    partitions = [Partition.of(backend.keys, NS, p) for p in range(3)]
    ensure_groups(backend, partitions)
    ensure_groups(backend, partitions)  # BUSYGROUP: already there, nothing logged
    assert all(p.had_group for p in partitions)
    client = backend.client
    assert [client.xinfo_groups(p.stream)[0]["name"] for p in partitions] == [GROUP.encode()] * 3
    client.delete(partitions[1].stream)  # the stream went, with its group
    with caplog.at_level("ERROR", logger="taskguard.drain"):
        ensure_groups(backend, partitions)
    assert [r.getMessage() for r in caplog.records] == [
        f"drain: the write-behind stream of {NS}/1 vanished with its consumer group: records "
        "queued there and not yet written are lost (Redis lost its data: FLUSHDB, a restart "
        "without persistence, an eviction; or the key was deleted)"
    ]
    client.delete(partitions[2].stream)
    client.set(partitions[2].stream, "not a stream")
    with pytest.raises(BackendError) as info:  # mapped by the port, like any Redis error
        ensure_groups(backend, partitions)
    assert isinstance(info.value.__cause__, redis.ResponseError)
    assert "WRONGTYPE" in str(info.value.__cause__)


def test_two_pools_never_consume_one_partition_at_once(
    backend: RedisBackend, producer: Producer, sqlite_store: SQLStore
) -> None:
    batches: list[tuple[str, int, float, float]] = []
    lock = threading.Lock()

    def on_batch(sender: DrainPool, partition: int, duration: float, **kwargs: Any) -> None:
        end = time.monotonic()
        with lock:
            batches.append((sender.owner, partition, end - duration, end))

    signals.drain_batch_written.connect(on_batch)
    try:
        first = DrainPool(backend, sqlite_store, workers=2, batch_size=50, lease_ttl=3.0)
        second = DrainPool(backend, sqlite_store, workers=2, batch_size=50, lease_ttl=3.0)
        with first, second:
            deadline = time.monotonic() + 30
            while not (len(first.held()) == P // 2 and len(second.held()) == P // 2):
                assert time.monotonic() < deadline, (first.held(), second.held())
                time.sleep(0.05)
            assert not set(first.held()) & set(second.held())
            for i in range(6000):
                producer.put(f"k{i % 2000}", i)
            assert first.wait_idle(60)
    finally:
        signals.drain_batch_written.disconnect(on_batch)
    assert stored(sqlite_store, sorted(producer.expected)) == producer.expected
    # Each pool drained its own half of the partitions.
    by_pool = {first.owner: set(), second.owner: set()}
    for owner, p, _, _ in batches:
        by_pool[owner].add(p)
    assert len(by_pool[first.owner]) == len(by_pool[second.owner]) == P // 2
    for p in range(P):
        spans = sorted((start, end, owner) for owner, q, start, end in batches if q == p)
        for (_, end, owner), (start, _, other) in itertools.pairwise(spans):
            assert owner == other or start >= end, f"partition {p}: {owner} and {other} overlap"


def test_a_poison_row_is_dead_lettered_and_the_rest_written(
    backend: RedisBackend, producer: Producer, pg_store: SQLStore
) -> None:
    with pg_store._engine.begin() as conn:  # a constraint the data can break
        conn.execute(
            text(f"ALTER TABLE {pg_store.table.name} ADD CONSTRAINT no_poison CHECK (key <> 'bad')")
        )
    for i in range(300):
        producer.put(f"ok{i}", i)
    bad_sid = producer.put("bad", {"x": 1})
    lettered: list[dict[str, Any]] = []

    def on_dead(**kwargs: Any) -> None:
        lettered.append(kwargs)

    signals.dead_lettered.connect(on_dead)
    try:
        with DrainPool(backend, pg_store, workers=1, batch_size=1000) as pool:
            assert pool.wait_idle(30)
    finally:
        signals.dead_lettered.disconnect(on_dead)
    written = stored(pg_store, sorted(producer.expected))
    assert written == {k: v for k, v in producer.expected.items() if k != "bad"}
    [letter] = dead_letters(backend, NS)
    assert (letter.key, letter.version, letter.attempts) == ("bad", version_of(bad_sid), 1)
    assert "no_poison" in letter.error
    assert [kw["keys"] for kw in lettered] == [["bad"]]
    assert metrics(backend, NS).dead_letters == 1
    assert producer.dirty() == {}

    # Fix the cause, re-queue, drain again: the record lands with its original version.
    with pg_store._engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {pg_store.table.name} DROP CONSTRAINT no_poison"))
    assert requeue_dead_letters(backend, NS) == 1
    assert dead_letters(backend, NS) == []
    with DrainPool(backend, pg_store, workers=1) as pool:
        assert pool.wait_idle(30)
    row = pg_store.load(NS, "bad")
    assert row is not None
    assert (row.value, row.version) == ({"x": 1}, version_of(bad_sid))


def test_a_requeued_dead_letter_never_overwrites_a_newer_write(
    backend: RedisBackend, producer: Producer, sqlite_store: SQLStore
) -> None:
    stream = backend.keys.cache_stream(NS, partition_of("k", P))
    old = producer.put("k", "old")
    fields = {"k": "k", "v": json.dumps("old"), "c": "json", "V": version_of(old)}
    fields["p"] = partition_of("k", P)
    backend.client.xadd(backend.keys.dead_letters(NS), {**fields, "id": old, "error": "x"})
    backend.client.xdel(stream, old)
    producer.put("k", "new")
    with DrainPool(backend, sqlite_store, workers=1) as pool:
        assert pool.wait_idle(30)
        assert requeue_dead_letters(backend, NS) == 1
        assert pool.wait_idle(30)
    row = sqlite_store.load(NS, "k")
    assert row is not None
    assert row.value == "new"


def test_a_record_delivered_too_often_is_dead_lettered(
    backend: RedisBackend, producer: Producer, sqlite_store: SQLStore
) -> None:
    sid = producer.put("crashy", 1)
    producer.put("fine", 2)
    partition = Partition.of(backend.keys, NS, partition_of("crashy", P))
    partition.ensure_group(backend)
    client = backend.client
    # A consumer that "crashed" on it: read, then re-claimed 5 more times (6 deliveries).
    client.xreadgroup(GROUP, "ghost", {partition.stream: ">"}, count=1)
    for _ in range(5):
        client.xclaim(partition.stream, GROUP, "ghost", 0, [sid])
    with DrainPool(backend, sqlite_store, workers=1, max_deliveries=5) as pool:
        assert pool.wait_idle(30)
    [letter] = dead_letters(backend, NS)
    assert (letter.key, letter.attempts) == ("crashy", 7)
    assert "max_deliveries=5" in letter.error
    assert sqlite_store.load(NS, "crashy") is None
    assert stored(sqlite_store, ["fine"]) == {"fine": 2}


@TOPOLOGIES
def test_what_a_dead_consumer_left_pending_is_redelivered(
    backend: RedisBackend, producer: Producer, sqlite_store: SQLStore
) -> None:
    for i in range(50):
        producer.put(f"k{i}", i)
    client = backend.client
    for p in range(P):
        partition = Partition.of(backend.keys, NS, p)
        partition.ensure_group(backend)
        client.xreadgroup(GROUP, "dead-consumer", {partition.stream: ">"}, count=1000)
    assert metrics(backend, NS).pending == 50
    with DrainPool(backend, sqlite_store, workers=2) as pool:
        assert pool.wait_idle(30)
    assert stored(sqlite_store, sorted(producer.expected)) == producer.expected
    assert metrics(backend, NS).pending == 0


def test_stop_flushes_the_batch_in_flight(
    backend: RedisBackend, producer: Producer, sqlite_store: SQLStore
) -> None:
    for i in range(40):
        producer.put(f"k{i}", i)
    # A long linger: the batch is still gathering when stop() is called.
    pool = DrainPool(backend, sqlite_store, workers=1, batch_size=1000, linger=3.0)
    pool.start()
    deadline = time.monotonic() + 20
    while metrics(backend, NS).pending < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert pool.stop(10.0)
    assert metrics(backend, NS).pending == 0
    written = stored(sqlite_store, sorted(producer.expected))
    assert len(written) + metrics(backend, NS).backlog == 40
    assert written == {k: producer.expected[k] for k in written}
    assert written  # the in-flight batch was written, not dropped
    # Leases released: another pool can take every partition at once.
    assert all(backend.client.get(backend.keys.drain_lease(NS, p)) is None for p in range(P))


def test_a_transient_store_outage_is_waited_out(
    backend: RedisBackend, producer: Producer, sqlite_store: SQLStore
) -> None:
    from taskguard.errors import StoreError

    class Flaky:
        def __init__(self) -> None:
            self.failures = 4

        def write(self, namespace: str, records: Any) -> None:
            if self.failures:
                self.failures -= 1
                raise StoreError("server closed the connection", transient=True)
            sqlite_store.write(namespace, records)

        def load(self, namespace: str, key: str) -> Any:
            return sqlite_store.load(namespace, key)

        def load_many(self, namespace: str, keys: Any) -> Any:
            return sqlite_store.load_many(namespace, keys)

        def close(self) -> None:
            pass

    failed: list[bool] = []

    def on_failed(transient: bool, **kwargs: Any) -> None:
        failed.append(transient)

    signals.drain_batch_failed.connect(on_failed)
    for i in range(20):
        producer.put(f"k{i}", i)
    try:
        with DrainPool(
            backend, Flaky(), workers=1, backoff_base=0.01, backoff_max=0.05, breaker_threshold=2
        ) as pool:
            assert pool.wait_idle(30)
    finally:
        signals.drain_batch_failed.disconnect(on_failed)
    assert failed == [True] * 4
    assert stored(sqlite_store, sorted(producer.expected)) == producer.expected


def test_a_stream_lost_with_its_group_is_logged_as_a_loss(
    backend: RedisBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """A consumer group the pool saw before and finds missing means the stream was deleted
    with what it held (FLUSHDB, a restart without persistence): an error names the loss.
    Creating a group the pool never saw is not one."""
    partition = Partition.of(backend.keys, NS, 0)
    with caplog.at_level("ERROR", logger="taskguard.drain"):
        partition.ensure_group(backend)
        partition.ensure_group(backend)  # still there: nothing to say
        assert not caplog.records
        backend.client.delete(partition.stream)
        partition.ensure_group(backend)
    [record] = caplog.records
    assert record.getMessage().startswith(f"drain: the write-behind stream of {NS}/0 vanished")
    assert "not yet written are lost" in record.getMessage()
