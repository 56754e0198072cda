"""Which Redis a URL names, and the redis-py client that talks to it.

Three topologies, picked by the URL's scheme (the schemes of the ``limits`` package):

* one server: ``redis://``, ``rediss://`` (TLS) and ``unix://``;
* Redis Cluster: ``redis+cluster://[user:password@]h1:p1,h2:p2/`` (``rediss+cluster``
  for TLS), served by redis-py's ``RedisCluster``; the hosts are only where it starts
  looking, it learns the rest from ``CLUSTER SLOTS``;
* Sentinel: ``redis+sentinel://[user:password@]h1:p1,h2:p2/<service>[/<db>]``
  (``rediss+sentinel`` for TLS), served by a ``Sentinel(...).master_for(service)`` client,
  which asks the sentinels where the master is on every new connection, so it follows a
  failover by itself.

The userinfo and the query (``?ssl_ca_certs=...&socket_keepalive=true``) are read as
redis-py reads a ``redis://`` URL, and apply to the data nodes (the master and replicas,
or every cluster node). The sentinels' own credentials, when they have some, come from
``sentinel_username`` / ``sentinel_password`` in the query; a ``rediss+sentinel`` URL
speaks TLS to both. ``redis_options`` given to the backend win over the URL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.connection import parse_url
from redis.crc import key_slot

from taskguard.urls import redact

__all__ = [
    "REDIS_SCHEMES",
    "SlotRoutes",
    "Target",
    "async_client_for",
    "client_for",
    "is_cluster",
    "parse_target",
    "scan_page",
]

#: Every URL scheme a Redis backend accepts.
REDIS_SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+cluster",
    "rediss+cluster",
    "redis+sentinel",
    "rediss+sentinel",
)

_DEFAULT_PORT = {"cluster": 6379, "sentinel": 26379}
# redis-py's names for TLS settings: what a rediss+sentinel URL also sends the sentinels.
_SSL_PREFIX = "ssl"


@dataclass(frozen=True)
class Target:
    """What a Redis URL names.

    Attributes:
        topology: ``"single"``, ``"cluster"`` or ``"sentinel"``.
        url: The URL as given.
        nodes: ``(host, port)`` of the seed nodes (cluster) or sentinels; empty for one
            server.
        service: The Sentinel service (master) name; empty otherwise.
        options: Connection keyword arguments for the data nodes, read from the URL as
            redis-py reads them (``db``, ``username``, ``password``, ``ssl``...).
        sentinel_options: Keyword arguments for the connections to the sentinels.
    """

    topology: str
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    sentinel_options: dict[str, Any] = field(default_factory=dict)


def parse_target(url: str) -> Target:
    """Read ``url`` (see the module docstring).

    Raises:
        ValueError: An unknown scheme, no host, a cluster URL with a database other than 0,
            or a sentinel URL without a service name. The message shows the URL redacted.

    Example:
        >>> t = parse_target("redis+sentinel://:pw@h1:26379,h2/mymaster/2")
        >>> t.topology, t.nodes, t.service, t.options["db"], t.options["password"]
        ('sentinel', (('h1', 26379), ('h2', 26379)), 'mymaster', 2, 'pw')
        >>> parse_target("redis+cluster://h1:7000,h2:7001/").nodes
        (('h1', 7000), ('h2', 7001))
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in REDIS_SCHEMES:
        raise ValueError(
            f"unsupported Redis URL {redact(url)!r}: use one of "
            + ", ".join(f"{s}://" for s in REDIS_SCHEMES)
        )
    base, _, topology = scheme.partition("+")
    if not topology:
        return Target("single", url)
    userinfo, at, hosts_path = rest.rpartition("@")
    hosts, _, path_query = hosts_path.partition("/")
    path, _, query = path_query.partition("?")
    if not hosts:
        raise ValueError(f"{redact(url)!r} names no host")
    nodes = tuple(_node(part, _DEFAULT_PORT[topology], url) for part in hosts.split(","))
    pairs = parse_qsl(query, keep_blank_values=False)
    sentinel_auth = {k: v for k, v in pairs if k in ("sentinel_username", "sentinel_password")}
    query = urlencode([(k, v) for k, v in pairs if k not in sentinel_auth])
    segments = [s for s in path.split("/") if s]
    service = ""
    if topology == "sentinel":
        if not segments:
            raise ValueError(f"{redact(url)!r} names no Sentinel service (…/<service>/<db>)")
        service, segments = segments[0], segments[1:]
    if len(segments) > 1:
        raise ValueError(f"{redact(url)!r}: the path is /<db> after the hosts")
    # redis-py reads the userinfo and query of a one-host URL: let it, for the same
    # parsing (and the same TLS options) as a redis:// URL.
    host, port = nodes[0]
    db = f"/{segments[0]}" if segments else ""
    options: dict[str, Any] = parse_url(  # type: ignore[no-untyped-call]
        f"{base}://{userinfo}{at}{host}:{port}{db}?{query}"
    )
    options.pop("host", None)
    options.pop("port", None)
    if options.pop("connection_class", None) is not None:  # rediss: TLS, the cluster's way
        options["ssl"] = True
    if topology == "cluster":
        if options.pop("db", 0) != 0:
            raise ValueError(f"{redact(url)!r}: Redis Cluster has database 0 only")
        return Target("cluster", url, nodes, options=options)
    sentinel_options = {k.removeprefix("sentinel_"): v for k, v in sentinel_auth.items()} | {
        k: v for k, v in options.items() if k.startswith(_SSL_PREFIX)
    }
    return Target("sentinel", url, nodes, service, options, sentinel_options)


def _node(text: str, default_port: int, url: str) -> tuple[str, int]:
    if text.startswith("["):  # an IPv6 address: [::1]:7000
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = text.partition(":")
    if not host:
        raise ValueError(f"{redact(url)!r}: a host is empty")
    try:
        return host, int(port) if port else default_port
    except ValueError:
        raise ValueError(f"{redact(url)!r}: bad port {port!r}") from None


def _connection_timeouts(options: dict[str, Any]) -> dict[str, Any]:
    return {k: options[k] for k in ("socket_timeout", "socket_connect_timeout") if k in options}


def client_for(url: str, options: dict[str, Any]) -> redis.Redis:
    """A redis-py client for ``url`` with connection ``options`` (which win over the URL).

    A cluster's ``RedisCluster`` and a Sentinel's ``master_for`` client take the same
    command calls as ``redis.Redis`` (scripts, pipelines, pub/sub), so callers keep one
    type; :func:`is_cluster` tells a cluster client apart where it matters.
    """
    target = parse_target(url)
    if target.topology == "single":
        return redis.Redis.from_url(url, **options)
    merged = {**target.options, **options}
    if target.topology == "cluster":
        # A cluster node answers MOVED/ASK; RedisCluster follows them and refreshes its
        # slot map. Its own retries stay as few as ours: an outage must fail fast.
        nodes = [
            redis.cluster.ClusterNode(h, p)  # type: ignore[no-untyped-call]
            for h, p in target.nodes
        ]
        merged.pop("health_check_interval", None)
        return cast("redis.Redis", redis.cluster.RedisCluster(startup_nodes=nodes, **merged))
    sentinel_options = {
        **_connection_timeouts(merged),
        **target.sentinel_options,
        **merged.pop("sentinel_kwargs", {}),
    }
    sentinel = redis.sentinel.Sentinel(list(target.nodes), sentinel_kwargs=sentinel_options)
    return cast("redis.Redis", sentinel.master_for(target.service, **merged))


def async_client_for(url: str, options: dict[str, Any]) -> redis.asyncio.Redis:
    """:func:`client_for` with ``redis.asyncio`` clients."""
    target = parse_target(url)
    if target.topology == "single":
        return redis.asyncio.Redis.from_url(url, **options)
    merged = {**target.options, **options}
    if target.topology == "cluster":
        nodes = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in target.nodes]
        merged.pop("health_check_interval", None)
        client = redis.asyncio.cluster.RedisCluster(startup_nodes=nodes, **merged)
        return cast("redis.asyncio.Redis", client)
    sentinel_options = {
        **_connection_timeouts(merged),
        **target.sentinel_options,
        **merged.pop("sentinel_kwargs", {}),
    }
    sentinel = redis.asyncio.sentinel.Sentinel(list(target.nodes), sentinel_kwargs=sentinel_options)
    return cast("redis.asyncio.Redis", sentinel.master_for(target.service, **merged))


def is_cluster(client: object) -> bool:
    """True for a Redis Cluster client (sync or asyncio)."""
    return isinstance(client, (redis.cluster.RedisCluster, redis.asyncio.cluster.RedisCluster))


def scan_page(
    client: Any, cursor: int, *, match: str, count: int, _type: str | None = None
) -> tuple[int, list[Any]]:
    """One ``SCAN`` step: ``(next cursor, names)``; the cursor is 0 once every key was seen.

    On Redis Cluster the keyspace is split over the masters: the cursor then walks them
    one after the other (its low part names the master, by name order; the rest is that
    master's own cursor), so a caller keeps one integer cursor on every topology.
    """
    if not is_cluster(client):
        reply = client.scan(cursor, match=match, count=count, _type=_type)
        return int(reply[0]), list(reply[1])
    primaries = sorted(client.get_primaries(), key=lambda node: node.name)
    index, node_cursor = cursor % len(primaries), cursor // len(primaries)
    cursors, names = client.scan(
        node_cursor, match=match, count=count, _type=_type, target_nodes=primaries[index]
    )
    node_next = int(next(iter(cursors.values())))
    if node_next != 0:
        return node_next * len(primaries) + index, list(names)
    return (index + 1 if index + 1 < len(primaries) else 0), list(names)


class SlotRoutes:
    """The script shortcut on Redis Cluster: per hash slot, the client of its master.

    ``RedisCluster`` works out each command's slot and node in Python on every call (about
    50 µs here); a script's keys share one slot, so the backend sends it straight to the
    slot's master, found once. When that master answers that the script did not run there
    (``MOVED``/``ASK``: the slot moved; ``TRYAGAIN``; ``READONLY``: it was demoted) or
    cannot be reached, the routes are forgotten and the call goes through
    ``RedisCluster``, which follows the redirection and refreshes its slot map.

    Args:
        cluster: The ``RedisCluster`` client.
    """

    #: The script did not run on the node: ask ``RedisCluster`` (a lost connection is
    #: retried once too, as redis-py's own one retry does on one server).
    NOT_RUN = (
        redis.exceptions.AskError,  # MovedError too
        redis.exceptions.TryAgainError,
        redis.exceptions.ReadOnlyError,
        redis.exceptions.ConnectionError,
    )

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self._nodes: dict[int, redis.Redis] = {}

    def client_for(self, key: str) -> redis.Redis:
        """The client of the master that owns ``key``'s slot."""
        slot = key_slot(key.encode())
        node = self._nodes.get(slot)
        if node is None:
            owner = self.cluster.nodes_manager.get_node_from_slot(slot)
            node = self._nodes[slot] = self.cluster.get_redis_connection(owner)
        return node

    def forget(self) -> None:
        """Drop every route: the next calls find the masters again."""
        self._nodes.clear()
