"""The drain's acknowledgement (``drain_ack.lua`` via ``Partition.ack``) on real Redis.

After a batch commits, the ack clears the dirty marks still naming the batch's writes,
XACKs its entries and removes them: by trimming the stream up to the batch's newest id when
nothing else is pending, else by deleting the batch's own ids (an older entry still pending
for another consumer must survive). Keys travel packed in one argument, with a separator
byte no key holds; keys that hold every candidate byte travel one argument each.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

import taskguard
from taskguard.backend import RedisBackend
from taskguard.drain.partition import GROUP, Partition, read_new

NS = "acks"


@pytest.fixture
def backend(redis_url: str, tg_prefix: str) -> Iterator[RedisBackend]:
    found = taskguard.connect(redis_url, prefix=tg_prefix).backend
    assert isinstance(found, RedisBackend)
    yield found
    found.close()


@pytest.fixture
def partition(backend: RedisBackend) -> Partition:
    found = Partition.of(backend.keys, NS, 0)
    found.ensure_group(backend)
    return found


def queue(client: redis.Redis, partition: Partition, key: str) -> bytes:
    sid: bytes = client.xadd(partition.stream, {"k": key, "v": '"x"', "c": "json"})
    client.hset(partition.dirty, key, sid)
    return sid


def read_all(backend: RedisBackend, partition: Partition, consumer: str) -> list[bytes]:
    got = read_new(backend, consumer, [partition], count=1000, block=None)
    return [sid for sid, _ in got.get(partition, [])]


@pytest.mark.parametrize(
    "keys",
    [
        ["a", "b", "c"],
        ["", "with space", "tab\tnew\nline", "nul\x00byte", "é"],
        ["".join(map(chr, range(32))), "plain"],  # no free separator: one argument each
    ],
)
def test_ack_clears_marks_acks_and_removes_the_batch(
    backend: RedisBackend, partition: Partition, keys: list[str]
) -> None:
    client = backend.client
    for key in keys:
        queue(client, partition, key)
    ids = read_all(backend, partition, "c1")
    latest = dict(zip(keys, ids, strict=True))
    newer = queue(client, partition, keys[0])  # written again after the read: not in the batch
    assert partition.ack(backend, latest, ids, newest=ids[-1], same=True) == len(keys)
    remaining = {k.decode(): v for k, v in client.hgetall(partition.dirty).items()}
    assert remaining == {keys[0]: newer}  # the newer write keeps its mark
    assert [sid for sid, _ in client.xrange(partition.stream)] == [newer]
    assert client.xpending(partition.stream, GROUP)["pending"] == 0


def test_an_older_entry_pending_elsewhere_is_not_trimmed(
    backend: RedisBackend, partition: Partition
) -> None:
    client = backend.client
    old = queue(client, partition, "old")
    assert read_all(backend, partition, "gone") == [old]  # a consumer that never acks
    ids = [queue(client, partition, key) for key in ("a", "b")]
    assert read_all(backend, partition, "c1") == ids
    assert partition.ack(backend, {"a": ids[0], "b": ids[1]}, ids) == 2
    assert [sid for sid, _ in client.xrange(partition.stream)] == [old]
    assert client.hgetall(partition.dirty) == {b"old": old}


def test_coalesced_batch_sends_every_id_and_only_the_latest_per_key(
    backend: RedisBackend, partition: Partition
) -> None:
    client = backend.client
    first = queue(client, partition, "k")
    second = queue(client, partition, "k")
    ids = read_all(backend, partition, "c1")
    assert ids == [first, second]
    assert partition.ack(backend, {"k": second.decode()}, [i.decode() for i in ids]) == 2
    assert client.xlen(partition.stream) == 0
    assert client.hgetall(partition.dirty) == {}
