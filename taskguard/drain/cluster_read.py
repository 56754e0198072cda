"""The drain's reads on Redis Cluster, sent straight to each partition's master.

``partition.read_new`` reads every partition with one non-blocking ``XREADGROUP`` each.
Through ``RedisCluster`` the command must be named by a str, and redis-py then parses
every entry of the reply into a dict; named by bytes on the master's own client, the
reply stays as Redis sends it, which is what the drain reads anyway.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, Protocol

import redis

from taskguard.backend.topology import SlotRoutes

__all__ = ["read_on_masters"]


class HasStream(Protocol):
    """A partition: its stream's key."""

    @property
    def stream(self) -> str: ...


#: Per Redis Cluster client, the client of each slot's master (the drain's own routes).
_ROUTES: weakref.WeakKeyDictionary[Any, SlotRoutes] = weakref.WeakKeyDictionary()


def read_on_masters(
    cluster: Any,
    consumer: str,
    partitions: Sequence[HasStream],
    count: int,
    *,
    group: str,
    raw_name: bytes,
) -> list[Any]:
    """The non-blocking reads of ``partition.read_new`` on Redis Cluster: one pipeline per
    master, straight to it, with XREADGROUP named by bytes (``raw_name``) so the replies
    stay raw (through ``RedisCluster`` the command must be named by a str, and redis-py
    then parses every entry into a dict: about 6 µs of drain CPU per row). Partitions
    whose master did not run the read (the slot moved, the node is gone) are read again
    through ``RedisCluster``, which follows the redirection."""
    routes = _ROUTES.get(cluster)
    if routes is None:
        routes = _ROUTES[cluster] = SlotRoutes(cluster)
    by_node: dict[int, tuple[redis.Redis, list[int]]] = {}
    for i, p in enumerate(partitions):
        node = routes.client_for(p.stream)
        by_node.setdefault(id(node), (node, []))[1].append(i)
    replies: list[Any] = [None] * len(partitions)
    again: list[int] = []
    for node, indexes in by_node.values():
        pipe = node.pipeline(transaction=False)
        for i in indexes:
            pipe.execute_command(  # type: ignore[no-untyped-call]
                raw_name, "GROUP", group, consumer, "COUNT", count,
                "STREAMS", partitions[i].stream, ">",
            )  # fmt: skip
        try:
            found = pipe.execute(raise_on_error=False)
        except SlotRoutes.NOT_RUN:
            again += indexes
            continue
        for i, reply in zip(indexes, found, strict=True):
            if isinstance(reply, SlotRoutes.NOT_RUN):
                again.append(i)
            elif isinstance(reply, Exception):
                raise reply  # e.g. NOGROUP: the caller's, as through RedisCluster
            else:
                replies[i] = reply
    if again:
        routes.forget()
        pipe = cluster.pipeline(transaction=False)
        for i in again:  # RedisCluster routes by the command's name, a str
            pipe.execute_command(
                "XREADGROUP", "GROUP", group, consumer, "COUNT", count,
                "STREAMS", partitions[i].stream, ">",
            )  # fmt: skip
        for i, reply in zip(again, pipe.execute(), strict=True):
            replies[i] = reply
    return replies
