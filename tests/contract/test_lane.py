"""The lane (taskguard/backend/lane.py) sends EVALSHA as redis-py would, on a real Redis.

Every reply and error reads as through ``Redis.evalsha``; a lost connection is retried on
a new one; a thread's lane holds its own connection and gives it back when the thread
ends; a forked child never sends on its parent's connection.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

import taskguard
from taskguard.backend import lane as lane_module
from taskguard.backend.lane import Lane, Lanes, PlainLane
from taskguard.keys import KeySchema
from taskguard.testing.servers import RedisServer


@dataclass(frozen=True)
class Source:
    """A Lua script as a lane needs it: its source and SHA."""

    source: str

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()


def fresh(body: str) -> Source:
    """``body`` with a comment no other script has: the server has not loaded it yet."""
    return Source(f"-- {uuid.uuid4().hex}\n{body}")


ECHO = fresh("return {KEYS, ARGV}")


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url, socket_timeout=2.0) as client:
        yield client


def _port(lane: Lane) -> int:
    """The lane connection's local port: the server names the client by it."""
    return int(lane._conn._sock.getsockname()[1])


@pytest.mark.parametrize(
    "args",
    [
        ("plain", b"bytes", 7, -3, 0.1, 1e-07, 2.5e20),
        ("é ü 漢字", b"\x00\xff\r\n", "", b""),
        tuple(str(n) for n in range(40)),
    ],
)
def test_replies_and_encoding_match_redis_py(client: redis.Redis, args: tuple[Any, ...]) -> None:
    keys = ["{k}:a", "{k}:b"]
    client.script_load(ECHO.source)
    expected = client.evalsha(ECHO.sha, len(keys), *keys, *args)
    assert Lane(client).evalsha(ECHO, keys, args) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "body",
    [
        "return nil",
        "return 42",
        "return 'text'",
        "return {1, 'two', {3, false}}",
        "return redis.status_reply('FINE')",
        "return tostring(0.5)",
    ],
)
def test_reply_types_match_redis_py(client: redis.Redis, body: str) -> None:
    script = fresh(body)
    assert Lane(client).evalsha(script, [], []) == client.evalsha(script.sha, 0)  # type: ignore[arg-type]


def test_a_script_the_server_lacks_is_loaded_and_sent_again(client: redis.Redis) -> None:
    script = fresh("return ARGV[1] .. '!'")
    assert client.script_exists(script.sha) == [False]
    pool = client.connection_pool
    before = pool._created_connections  # script_exists: one connection, back in the pool
    lane = Lane(client)
    assert lane.evalsha(script, [], ["hi"]) == b"hi!"  # type: ignore[arg-type]
    # Loaded on the lane's own connection: the server that said NOSCRIPT, no other.
    assert pool._created_connections == before
    assert pool._in_use_connections == {lane._conn}
    assert client.script_exists(script.sha) == [True]


def test_an_error_reply_raises_and_leaves_the_connection_in_step(client: redis.Redis) -> None:
    lane = Lane(client)
    failing = fresh("return redis.error_reply('NOPE ' .. ARGV[1])")
    with pytest.raises(redis.exceptions.ResponseError, match="NOPE first"):
        lane.evalsha(failing, [], ["first"])  # type: ignore[arg-type]
    port = _port(lane)
    assert lane.evalsha(ECHO, ["{k}:x"], ["second"]) == [[b"{k}:x"], [b"second"]]  # type: ignore[arg-type]
    assert _port(lane) == port


def test_a_value_redis_py_refuses_is_refused(client: redis.Redis) -> None:
    with pytest.raises(redis.exceptions.DataError):
        Lane(client).evalsha(ECHO, [], [True])  # type: ignore[arg-type]


@pytest.fixture
def retrying(redis_url: str) -> Iterator[redis.Redis]:
    """A client that retries once, as taskguard's own."""
    retry = redis.retry.Retry(redis.backoff.NoBackoff(), 1)
    with redis.Redis.from_url(redis_url, retry=retry) as client:
        yield client


def test_a_killed_connection_is_retried_on_a_new_one(retrying: redis.Redis) -> None:
    client = retrying
    lane = Lane(client)
    lane.evalsha(ECHO, [], ["warm"])  # type: ignore[arg-type]
    port = _port(lane)
    assert client.client_kill(f"127.0.0.1:{port}")
    assert lane.evalsha(ECHO, [], ["after"]) == [[], [b"after"]]  # type: ignore[arg-type]
    assert _port(lane) != port


def test_with_no_retry_a_killed_connection_raises_then_reconnects(redis_url: str) -> None:
    retry = redis.retry.Retry(redis.backoff.NoBackoff(), 0)
    with (
        redis.Redis.from_url(redis_url, retry=retry) as no_retry,
        redis.Redis.from_url(redis_url) as admin,
    ):
        lane = Lane(no_retry)
        lane.evalsha(ECHO, [], ["warm"])  # type: ignore[arg-type]
        admin.client_kill(f"127.0.0.1:{_port(lane)}")
        with pytest.raises(redis.exceptions.ConnectionError):
            lane.evalsha(ECHO, [], ["lost"])  # type: ignore[arg-type]
        assert lane.evalsha(ECHO, [], ["back"]) == [[], [b"back"]]  # type: ignore[arg-type]
        lane.close()


def test_only_short_values_are_kept_encoded(client: redis.Redis) -> None:
    # Keys and settings repeat from call to call; a packed batch (the drain's acks: a
    # batch's keys and ids in one argument) is sent once. Kept, 8192 of them would hold
    # hundreds of MB: the drain's memory grew by 55 bytes per row until this was fixed.
    batch, setting = b"k" * 40_000, b"short-setting"
    lane = Lane(client)
    assert lane.evalsha(ECHO, [], [batch, setting]) == [[], [batch, setting]]  # type: ignore[arg-type]
    assert batch not in lane_module._KNOWN
    assert setting in lane_module._KNOWN
    lane.close()


def test_each_thread_holds_its_own_connection_and_gives_it_back(client: redis.Redis) -> None:
    lanes = Lanes()
    mine = lanes.lane(client)
    assert isinstance(mine, Lane)
    assert lanes.lane(client) is mine
    pool = client.connection_pool
    seen: list[int] = []
    held: list[Any] = []

    def other() -> None:
        lane = lanes.lane(client)
        assert isinstance(lane, Lane)
        assert lane is not mine
        lane.evalsha(ECHO, [], ["t"])  # type: ignore[arg-type]
        seen.append(_port(lane))
        held.append(lane._conn)
        assert lane._conn in pool._in_use_connections

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    mine.evalsha(ECHO, [], ["m"])  # type: ignore[arg-type]
    assert seen
    assert seen[0] != _port(mine)
    # The thread's locals, its lane with them, are dropped as the thread ends (before
    # join returns): its connection is back in the pool (checked by identity).
    assert pool._in_use_connections == {mine._conn}
    assert held[0] in pool._available_connections


def test_a_client_that_is_no_redis_py_client_is_called_as_before() -> None:
    class Double:
        def evalsha(self, sha: str, numkeys: int, *rest: Any) -> Any:
            return ("double", sha, numkeys, rest)

    lane = Lanes().lane(Double())
    assert type(lane) is PlainLane
    assert lane.evalsha(ECHO, ["k"], ["a"]) == ("double", ECHO.sha, 1, ("k", "a"))  # type: ignore[arg-type]


def _child(backend: taskguard.RedisBackend, key: str, out: Any) -> None:
    backend._run(ECHO, [], ["child"], "child")  # type: ignore[arg-type]
    lane = backend._lanes.lane(backend.client)
    assert isinstance(lane, Lane)
    out.send((_port(lane), backend.client.get(key)))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_a_forked_child_never_sends_on_its_parents_connection(
    redis_url: str, tg_prefix: str
) -> None:
    given = redis.Redis.from_url(redis_url)
    for backend in (
        taskguard.RedisBackend(redis_url, keys=KeySchema(tg_prefix)),
        taskguard.RedisBackend(redis_url, keys=KeySchema(tg_prefix), client=given),
    ):
        backend._run(ECHO, [], ["parent"], "parent")  # type: ignore[arg-type]
        parent_lane = backend._lanes.lane(backend.client)
        assert isinstance(parent_lane, Lane)
        parent_port = _port(parent_lane)
        key = f"{tg_prefix}:forked"
        backend.client.set(key, "v")
        receive, send = multiprocessing.get_context("fork").Pipe(duplex=False)
        child = multiprocessing.get_context("fork").Process(
            target=_child, args=(backend, key, send)
        )
        child.start()
        child_port, value = receive.recv()
        child.join(10)
        assert child.exitcode == 0
        assert value == b"v"
        assert child_port != parent_port
        # The parent's connection is still its own and in step.
        assert backend._run(ECHO, [], ["again"], "parent") == [[], [b"again"]]  # type: ignore[arg-type]
        assert _port(parent_lane) == parent_port
        receive.close()
        send.close()
        backend.close()


def test_wake_then_evalsha_runs_the_script_woken_or_not(
    client: redis.Redis, tg_prefix: str
) -> None:
    lane = Lane(client)
    wake = f"{tg_prefix}:wake"
    client.lpush(wake, "1")
    assert lane.wake_then_evalsha(wake, 5.0, ECHO, [], ["woken"]) == [[], [b"woken"]]  # type: ignore[arg-type]
    assert client.llen(wake) == 0  # the BLPOP took the wake-up
    assert lane.wake_then_evalsha(wake, 0.01, ECHO, [], ["not"]) == [[], [b"not"]]  # type: ignore[arg-type]


def test_wake_then_evalsha_loads_a_script_the_server_lacks(
    client: redis.Redis, tg_prefix: str
) -> None:
    script = fresh("return 'loaded ' .. ARGV[1]")
    reply = Lane(client).wake_then_evalsha(f"{tg_prefix}:wake", 0.01, script, [], ["x"])  # type: ignore[arg-type]
    assert reply == b"loaded x"


def test_a_refused_wait_keeps_the_replies_in_step(client: redis.Redis, tg_prefix: str) -> None:
    lane = Lane(client)
    wrong = f"{tg_prefix}:not-a-list"
    client.set(wrong, "v")
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        lane.wake_then_evalsha(wrong, 0.01, ECHO, [], ["a"])  # type: ignore[arg-type]
    port = _port(lane)
    assert lane.evalsha(ECHO, [], ["next"]) == [[], [b"next"]]  # type: ignore[arg-type]
    assert _port(lane) == port


def test_a_restarted_server_without_the_script_gets_it_after_the_reconnect() -> None:
    """After a restart (or a failover) the reconnect finds a server with no scripts: the
    lane loads the script and sends it again, as on the first NOSCRIPT."""
    retry = redis.retry.Retry(redis.backoff.NoBackoff(), 1)
    with (
        RedisServer() as server,
        redis.Redis.from_url(server.url, retry=retry) as client,
        redis.Redis.from_url(server.url) as admin,
    ):
        lane = Lane(client)
        assert lane.evalsha(ECHO, [], ["before"]) == [[], [b"before"]]  # type: ignore[arg-type]
        admin.script_flush()
        admin.client_kill(f"127.0.0.1:{_port(lane)}")
        assert lane.evalsha(ECHO, [], ["after"]) == [[], [b"after"]]  # type: ignore[arg-type]
        lane.close()
