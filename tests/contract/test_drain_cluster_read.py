"""The drain's reads on Redis Cluster go straight to each partition's master, raw, and a
read whose master no longer owns the slot is read again through ``RedisCluster``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from redis.crc import key_slot

import taskguard
from taskguard.backend.topology import SlotRoutes
from taskguard.drain import cluster_read
from taskguard.drain.partition import _raw_entries


@dataclass(frozen=True)
class _Partition:
    stream: str


@pytest.fixture
def cluster(redis_cluster_url: str, tg_prefix: str) -> Iterator[Any]:
    client = taskguard.connect(redis_cluster_url, prefix=tg_prefix)
    cluster = client.backend.client
    yield cluster
    for node in cluster.get_primaries():
        for key in cluster.get_redis_connection(node).scan_iter(match=f"{tg_prefix}:*"):
            cluster.delete(key)
    cluster_read._ROUTES.pop(cluster, None)
    client.close()


def _streams(cluster: Any, prefix: str, count: int) -> list[_Partition]:
    """``count`` streams on different slots, each with a group "g" and one entry."""
    partitions = [_Partition(f"{prefix}:{{p{n}}}:s") for n in range(count)]
    for p in partitions:
        cluster.xgroup_create(p.stream, "g", id="0", mkstream=True)
        cluster.xadd(p.stream, {"n": p.stream})
    return partitions


def _read(cluster: Any, partitions: list[_Partition]) -> list[Any]:
    return cluster_read.read_on_masters(
        cluster, "c1", partitions, 10, group="g", raw_name=b"XREADGROUP"
    )


def test_reads_go_to_each_master_and_stay_raw(cluster: Any, tg_prefix: str) -> None:
    partitions = _streams(cluster, tg_prefix, 6)
    replies = _read(cluster, partitions)
    for p, reply in zip(partitions, replies, strict=True):
        [(_, fields)] = _raw_entries(reply)
        assert fields == [b"n", p.stream.encode()]
        # As Redis sent it (RESP2 or RESP3): an entry's fields are a flat list, not the
        # dict redis-py's XREADGROUP callback would make.
        streams = list(reply.values()) if isinstance(reply, dict) else [s[1] for s in reply]
        assert isinstance(streams[0][0][1], list)
    routes = cluster_read._ROUTES[cluster]
    assert len({id(routes.client_for(p.stream)) for p in partitions}) > 1


def test_a_stale_route_is_read_again_through_the_cluster(cluster: Any, tg_prefix: str) -> None:
    [partition] = _streams(cluster, tg_prefix, 1)
    owner = cluster.get_node_from_key(partition.stream)
    other = next(node for node in cluster.get_primaries() if node.name != owner.name)
    routes = SlotRoutes(cluster)  # as after a reshard: the slot's old master
    routes._nodes[key_slot(partition.stream.encode())] = cluster.get_redis_connection(other)
    cluster_read._ROUTES[cluster] = routes

    [reply] = _read(cluster, [partition])

    [(_, fields)] = _raw_entries(reply)
    assert fields == [b"n", partition.stream.encode()]
    assert routes._nodes == {}  # forgotten: the next read finds the masters again
    [again] = _read(cluster, [partition])
    assert _raw_entries(again) == []  # delivered once


def test_an_error_reply_raises_and_every_connection_stays_in_step(
    cluster: Any, tg_prefix: str
) -> None:
    # An error on one partition (its group is gone) is raised, and no connection is left
    # with a reply waiting in it for its next user.
    partitions = _streams(cluster, tg_prefix, 6)
    cluster.xgroup_destroy(partitions[2].stream, "g")
    with pytest.raises(redis.exceptions.ResponseError, match="NOGROUP"):
        _read(cluster, partitions)
    cluster.xgroup_create(partitions[2].stream, "g", id="0")
    replies = _read(cluster, partitions)
    assert len(_raw_entries(replies[2])) == 1  # its entry, read now
    for node in cluster.get_primaries():
        pool = cluster.get_redis_connection(node).connection_pool
        assert not pool._in_use_connections  # every one given back
