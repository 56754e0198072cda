"""Throwaway Redis Cluster and Sentinel topologies on loopback, from the binaries (no Docker).

::

    from taskguard.testing.topologies import RedisCluster, RedisSentinel

    with RedisCluster() as cluster:          # 3 masters, 1 replica each
        client = taskguard.connect(cluster.url)   # redis+cluster://127.0.0.1:p1,.../

    with RedisSentinel() as sentinel:        # a master, a replica, 3 sentinels
        client = taskguard.connect(sentinel.url)  # redis+sentinel://.../mymaster/0
        sentinel.master.crash()              # a failover: the replica takes over

Each server is a :class:`~taskguard.testing.RedisServer` this process owns, on a free
port, so stopping the topology stops exactly what it started and nothing else.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from ._process import free_port, kill
from .servers import RedisServer, find_redis_server

__all__ = ["RedisCluster", "RedisSentinel", "find_redis_cli"]


def find_redis_cli(server_binary: str | None = None) -> str:
    """The ``redis-cli`` beside ``redis-server`` (or on ``PATH``).

    Raises:
        RuntimeError: None was found.
    """
    binary = Path(server_binary or find_redis_server())
    beside = binary.with_name("redis-cli")
    if beside.is_file():
        return str(beside)
    found = shutil.which("redis-cli")
    if found:
        return found
    raise RuntimeError("no redis-cli binary found: `apt-get install -y redis-tools`")


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True)


def _wait(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"{what} not within {timeout}s (last error: {last!r})")


class _Topology:
    servers: list[RedisServer]

    def __enter__(self) -> Any:
        # ``with Topology().start() as t:`` must not set it up a second time.
        if self.servers and all(server.is_running() for server in self.servers):
            return self
        return self.start()

    def start(self, timeout: float = 30.0) -> Any:
        raise NotImplementedError

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop every server this topology started, and remove their directories."""
        for server in self.servers:
            server.close()


class RedisCluster(_Topology):
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each.

    Args:
        masters: How many masters (at least 3, as ``redis-cli --cluster create`` wants).
        replicas: Replicas per master.
        node_timeout_ms: ``cluster-node-timeout``: how long a master may be silent before
            its replica is promoted.

    Attributes:
        servers: Every node, masters first as created.
        url: ``redis+cluster://127.0.0.1:<p1>,...,127.0.0.1:<pN>/``.
    """

    def __init__(self, masters: int = 3, replicas: int = 1, *, node_timeout_ms: int = 2000):
        self.masters = masters
        self.replicas = replicas
        options = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
        ]  # fmt: skip
        self.servers: list[RedisServer] = [
            _ClusterNode(extra_args=options) for _ in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{server.port}" for server in self.servers)
        return f"redis+cluster://{hosts}/"

    def __repr__(self) -> str:
        return f"<RedisCluster {self.url}>"

    def start(self, timeout: float = 30.0) -> RedisCluster:
        """Start the nodes, join them (``redis-cli --cluster create``), and wait until
        every node reports ``cluster_state:ok``."""
        try:
            for server in self.servers:
                server.start()
            cli = find_redis_cli(self.servers[0].binary)
            command = [
                cli, "--cluster", "create",
                *(f"127.0.0.1:{server.port}" for server in self.servers),
                "--cluster-replicas", str(self.replicas),
                "--cluster-yes",
            ]  # fmt: skip
            done = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout[-2000:]!r}")
            for server in self.servers:
                _wait(f"cluster_state:ok on {server.port}", _ok(server.port), timeout)
        except BaseException:
            self.close()
            raise
        return self

    def master_ports(self) -> list[int]:
        """The ports of the nodes that are masters now."""
        return [s.port for s in self.servers if s.is_running() and _role(s.port) == "master"]


def _ok(port: int) -> Any:
    def check() -> bool:
        with _client(port) as client:
            info = client.cluster("info")
            return "cluster_state:ok" in str(info) or (
                isinstance(info, dict) and info.get("cluster_state") == "ok"
            )

    return check


def _role(port: int) -> str:
    with _client(port) as client:
        return str(client.role()[0])


class _ClusterNode(RedisServer):
    """A cluster node with its bus on a free port of its own: by default the bus listens
    on the port + 10000, which may be taken, or past 65535 for a port above 55535."""

    def _argv(self) -> list[str]:
        return [*super()._argv(), "--cluster-port", str(free_port())]


class RedisSentinel(_Topology):
    """A master, ``replicas`` replicas and ``sentinels`` sentinels watching them.

    Args:
        service: The name the sentinels know the master by.
        replicas: How many replicas.
        sentinels: How many sentinels (the quorum is a majority of them).
        down_after_ms: ``down-after-milliseconds``: silence before the master counts as
            down.
        master_args: More ``redis-server`` arguments for the master and the replicas
            (``["--appendonly", "yes", "--min-replicas-to-write", "1"]``).

    Attributes:
        master: The first master (after a failover, one of :attr:`replicas` is master).
        replicas: The replica servers.
        sentinels: The sentinel servers.
        url: ``redis+sentinel://127.0.0.1:<s1>,.../<service>/0``.
    """

    def __init__(
        self,
        service: str = "mymaster",
        *,
        replicas: int = 1,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        master_args: tuple[str, ...] = (),
    ) -> None:
        self.service = service
        self.down_after_ms = down_after_ms
        self.master = RedisServer(extra_args=master_args)
        replica_of = ("--replicaof", "127.0.0.1", str(self.master.port))
        self.replicas = [
            RedisServer(extra_args=(*master_args, *replica_of)) for _ in range(replicas)
        ]
        self.sentinels = [_SentinelServer() for _ in range(sentinels)]
        self.servers = [self.master, *self.replicas, *self.sentinels]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def __repr__(self) -> str:
        return f"<RedisSentinel {self.url}>"

    def start(self, timeout: float = 30.0) -> RedisSentinel:
        """Start the servers, then the sentinels, and wait until every sentinel knows the
        replicas and the other sentinels (so a failover can be voted at once).

        On a busy machine a sentinel may find the new master silent past
        ``down_after_ms`` before it settles (and even fail it over): the whole topology
        is then stopped and started once more, from the sentinels' first configuration.
        """
        try:
            for attempt in (1, 2):
                try:
                    self._start_once(timeout)
                    return self
                except _NotReady:
                    if attempt == 2:
                        raise
                    for server in self.servers:
                        server.stop()
        except BaseException:
            self.close()
            raise
        return self

    def _start_once(self, timeout: float) -> None:
        self.master.start()
        for replica in self.replicas:
            replica.start()
        quorum = len(self.sentinels) // 2 + 1
        for sentinel in self.sentinels:
            sentinel.configure(self, quorum)
            sentinel.start()
        for sentinel in self.sentinels:
            seen: list[Any] = []
            try:
                _wait(f"sentinel {sentinel.port} ready", self._ready(sentinel.port, seen), timeout)
            except RuntimeError as exc:
                raise _NotReady(f"{exc}; it saw: {seen[-1] if seen else 'nothing'}") from None

    def _ready(self, port: int, seen: list[Any]) -> Any:
        def check() -> bool:
            with _client(port) as client:
                info = client.sentinel_master(self.service)
            seen[:] = [{k: info.get(k) for k in ("num-other-sentinels", "num-slaves", "flags")}]
            return (
                int(info["num-other-sentinels"]) == len(self.sentinels) - 1
                and int(info["num-slaves"]) == len(self.replicas)
                and "s_down" not in str(info["flags"])
            )

        return check

    def master_port(self) -> int:
        """The port of the master the sentinels name now."""
        with _client(self.sentinels[0].port) as client:
            _, port = client.sentinel_get_master_addr_by_name(self.service)
        return int(port)

    def wait_for_failover(self, old_port: int, timeout: float = 30.0) -> int:
        """Wait until the sentinels name a master other than ``old_port`` and it takes
        writes; returns its port."""
        found: list[int] = []

        def check() -> bool:
            port = self.master_port()
            if port == old_port:
                return False
            with _client(port) as client:
                if client.role()[0] != "master":
                    return False
            found.append(port)
            return True

        _wait("a failover", check, timeout)
        return found[-1]


class _NotReady(RuntimeError):
    """The sentinels did not settle on the topology in time."""


class _SentinelServer(RedisServer):
    """``redis-server <conf> --sentinel``: the conf file is the sentinel's own, which it
    rewrites as it learns the topology."""

    def configure(self, topology: RedisSentinel, quorum: int) -> None:
        name = topology.service
        lines = [
            f"sentinel monitor {name} 127.0.0.1 {topology.master.port} {quorum}",
            f"sentinel down-after-milliseconds {name} {topology.down_after_ms}",
            f"sentinel failover-timeout {name} {max(topology.down_after_ms * 3, 3000)}",
            f"sentinel parallel-syncs {name} 1",
        ]
        (self.directory / "sentinel.conf").write_text("\n".join(lines) + "\n")

    def _argv(self) -> list[str]:
        return [
            self.binary, str(self.directory / "sentinel.conf"), "--sentinel",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--daemonize", "no",
        ]  # fmt: skip

    def stop(self, timeout: float = 10.0) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                kill(process)
        self._forget()
