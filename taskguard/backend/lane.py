"""The hot path's ``EVALSHA``: packed by taskguard, sent on a connection this thread holds.

``redis.Redis.evalsha`` takes a connection from the pool, packs the command through the
encoder, runs it inside a retry wrapper that times and counts it, and puts the connection
back: about 25 µs of Python per call on the 2-core benchmark machine, where a whole
loopback round trip costs 65-100 µs (docs/design.md, "The lane"). A guard's
admission, release and renewal are one ``EVALSHA`` each, so that cost is a quarter of
every decision.

A :class:`Lane` keeps one connection out of the client's pool for the thread that uses
it, packs ``EVALSHA`` from bytes it mostly has already (the SHA, pre-encoded ARGV), and
reads the reply with the connection's own parser (hiredis when installed). What stays
the same as through ``Redis.evalsha``:

- the connection, its options (TLS, auth, timeouts) and its parser: a reply or an error
  reads exactly as before, ``NOSCRIPT`` included (the script is loaded and sent again);
- redis-py's retry policy: a lost connection or a timeout is retried as many times as
  the connection's ``Retry`` allows (taskguard's client: once), on a fresh connection;
- any error while sending or reading closes the connection (redis-py's own rule), so a
  half-read reply never reaches the next call.

What differs: instrumentation that patches ``Redis.execute_command`` (Sentry's
``RedisIntegration``, OpenTelemetry's redis instrumentation) does not see these calls;
taskguard's own ``taskguard.admit`` / ``taskguard.release`` spans cover them. A client
that is not a ``redis.Redis`` with a connection pool (a test double, a user's wrapper)
gets :class:`PlainLane`, which calls its ``evalsha``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import redis

__all__ = ["Lane", "Lanes", "PlainLane"]


class Script(Protocol):
    """What a lane needs of a script (:class:`taskguard.backend.lua.Script` has it)."""

    @property
    def sha(self) -> str: ...

    @property
    def source(self) -> str: ...


#: What redis-py's default ``Retry`` retries.
_RETRIED = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
_EVALSHA = b"$7\r\nEVALSHA\r\n$40\r\n"
_SCRIPT_LOAD = b"*3\r\n$6\r\nSCRIPT\r\n$4\r\nLOAD\r\n"


def _bulk(value: Any) -> bytes:
    """One RESP bulk string, encoded as redis-py's encoder does (UTF-8, ``repr`` for
    numbers)."""
    if type(value) is bytes:
        data = value
    elif type(value) is str:
        data = value.encode()
    elif type(value) is int or type(value) is float:
        data = repr(value).encode()
    elif isinstance(value, (bytes, memoryview)):
        data = bytes(value)
    else:  # bool and anything else: redis-py refuses them, so does the lane
        raise redis.exceptions.DataError(
            f"Invalid input of type: '{type(value).__name__}'. "
            "Convert to a bytes, string, int or float first."
        )
    return b"$%d\r\n%b\r\n" % (len(data), data)


#: A key count (numkeys) as a bulk string, for the counts scripts take.
_COUNTS = tuple(_bulk(n) for n in range(32))

#: Keys and bytes ARGV -> their RESP bulk strings (cleared when full: keyed guards may
#: touch any number of keys).
_KNOWN: dict[str | bytes, bytes] = {}
_KNOWN_MAX = 8192


#: Longer values are encoded per call, never kept: a packed batch (the drain's acks) is
#: sent once, and 8192 of them would hold hundreds of MB.
_KNOWN_LONGEST = 256


def _remembered(value: str | bytes) -> bytes:
    bulk = _bulk(value)
    if len(value) <= _KNOWN_LONGEST:
        if len(_KNOWN) >= _KNOWN_MAX:
            _KNOWN.clear()
        _KNOWN[value] = bulk
    return bulk


class PlainLane:
    """The client's own ``evalsha``, for a client the lane cannot hold a connection of."""

    __slots__ = ("client",)

    def __init__(self, client: Any) -> None:
        self.client = client

    def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run ``script`` by EVALSHA, loading it once if the server does not know it."""
        client = self.client
        try:
            return client.evalsha(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            client.script_load(script.source)
            return client.evalsha(script.sha, len(keys), *keys, *args)

    def wake_then_evalsha(
        self, wakeup: str, wait: float, script: Script, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """``BLPOP wakeup wait``, then the script (two round trips here)."""
        self.client.blpop([wakeup], timeout=wait)
        return self.evalsha(script, keys, args)

    def close(self) -> None:
        """Nothing held."""


class Lane(PlainLane):
    """One connection held out of ``client``'s pool, for one thread's ``EVALSHA`` calls.

    Args:
        client: A ``redis.Redis`` (one server, a Sentinel master, or one Cluster node).
    """

    __slots__ = ("_conn", "_pool", "_retries", "_sha")

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client)
        self._pool = client.connection_pool
        self._conn: Any = self._pool.get_connection()
        retries = self._conn.retry.get_retries()
        self._retries = retries if retries >= 0 else 1
        #: Script SHA -> its packed ``$7 EVALSHA $40 <sha>`` (the count goes in front).
        self._sha: dict[str, bytes] = {}

    def _packed(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> bytes:
        head = self._sha.get(script.sha)
        if head is None:
            head = self._sha[script.sha] = b"%b%b\r\n" % (_EVALSHA, script.sha.encode())
        nkeys = len(keys)
        count = _COUNTS[nkeys] if nkeys < 32 else _bulk(nkeys)
        parts = [b"*%d\r\n" % (nkeys + len(args) + 3), head, count]
        # Keys and pre-encoded (bytes) ARGV repeat from call to call: their RESP form is
        # looked up; the rest (owners, counts, times) is encoded per call.
        known = _KNOWN
        for value in keys:
            parts.append(known.get(value) or _remembered(value))
        for value in args:
            if type(value) is bytes:
                parts.append(known.get(value) or _remembered(value))
            else:
                parts.append(_bulk(value))
        return b"".join(parts)

    def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        packed = [self._packed(script, keys, args)]
        try:
            return self._send(packed)
        except redis.exceptions.NoScriptError:
            # A server that restarted, or a replica just promoted, has no scripts yet
            # (also found after a reconnect): load it once, and send again.
            self._load(script)
            return self._send(packed)

    def _load(self, script: Script) -> None:
        """``SCRIPT LOAD`` on this lane's own connection: the server that answered
        NOSCRIPT (through the client, another pool connection would be made, and after a
        Sentinel failover it could reach another server)."""
        self._send([_SCRIPT_LOAD + _bulk(script.source)])

    def wake_then_evalsha(
        self, wakeup: str, wait: float, script: Script, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """``BLPOP wakeup wait`` and the script's EVALSHA in one write: the server runs the
        script as soon as the BLPOP returns (woken or timed out), and both replies come
        back together. Returns the script's reply.

        A lost connection is not retried as a pair: the script alone is sent again (a
        wait cut short only costs an earlier attempt).
        """
        blpop = b"*3\r\n$5\r\nBLPOP\r\n%b%b" % (_bulk(wakeup), _bulk(wait))
        conn = self._conn
        try:
            conn = self._connected()
            conn.send_packed_command([blpop + self._packed(script, keys, args)], False)
            try:
                conn.read_response()  # the wake-up, or None: either way the script ran
            except redis.exceptions.ResponseError:
                conn.read_response()  # keep the replies in step, then report the first
                raise
            return conn.read_response()
        except redis.exceptions.NoScriptError:
            self._load(script)
        except _RETRIED:
            conn.disconnect()
        return self.evalsha(script, keys, args)

    def _send(self, packed: list[bytes]) -> Any:
        # A lost connection or a timeout is sent again as many times as redis-py's retry
        # policy allows, each time on a new connection, made as the pool makes one.
        conn = self._conn
        try:
            conn = self._connected()
            conn.send_packed_command(packed, check_health=False)
            return conn.read_response()
        except _RETRIED as exc:
            error = exc
        for _ in range(self._retries):
            try:
                conn.connect()
                conn.send_packed_command(packed, check_health=False)
                return conn.read_response()
            except _RETRIED as exc:
                error = exc
        raise error

    def _connected(self) -> Any:
        # The lane's connection, connected through its own connect(): a Sentinel-managed
        # connection asks the sentinels for the master there. send_packed_command would
        # reconnect by itself, but to the address it had, the old master's after a
        # failover (redis-py's pool calls connect() when it hands a connection out).
        conn = self._conn
        if conn._sock is None:
            conn.connect()
        return conn

    def close(self) -> None:
        """Give the connection back to the pool (a thread's lane ends with the thread)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                self._pool.release(conn)
            except Exception:  # a pool reset after a fork, or closed: just close it
                conn.disconnect()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit: nothing to give back to
            self.close()


class Lanes(threading.local):
    """Per thread, a lane for each client it sent a script through."""

    def __init__(self) -> None:
        self.by_client: dict[int, PlainLane] = {}

    def lane(self, client: Any) -> PlainLane:
        """This thread's lane for ``client``."""
        lane = self.by_client.get(id(client))
        if lane is None or lane.client is not client:
            pool = getattr(client, "connection_pool", None)
            usable = isinstance(client, redis.Redis) and hasattr(pool, "get_connection")
            lane = Lane(client) if usable else PlainLane(client)
            self.by_client[id(client)] = lane
        return lane

    def drop(self) -> None:
        """Forget this thread's lanes (after a fork, or when the clients are closed)."""
        lanes, self.by_client = self.by_client, {}
        for lane in lanes.values():
            lane.close()
