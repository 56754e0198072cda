"""The Redis backend: one EVALSHA per admission, time from the server, fail fast when down."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from taskguard.errors import BackendError, BackendUnavailable, ConfigurationError, TaskGuardError
from taskguard.keys import KeySchema
from taskguard.urls import redact, scrub, secrets_of

from . import builtin_kinds  # noqa: F401 - registers the built-in op kinds
from .base import Backend
from .breakers import BREAKER_IDLE_MS, CLOSED_FIELDS, FORCED, effective_state
from .lua import Script, load_script
from .ops import ALLOWED_EMPTY, Admission, BreakerOp, Held, Op, granted
from .outage import OutageBreaker
from .redis_errors import classify
from .registry import kind_of, registered

__all__ = ["RedisBackend", "require_redis"]

logger = logging.getLogger("taskguard.backend")

_SCRIPTS: dict[tuple[str, tuple[type, ...]], Script] = {}
_BY_LIBS: dict[tuple[str, tuple[str, ...]], Script] = {}
_NAMED: dict[tuple[str, tuple[str, ...]], Script] = {}


def _script(name: str, ops: Sequence[Op]) -> Script:
    """``name``.lua with only the libraries its ops' kinds need: less Lua set up per call."""
    types = tuple(type(op) for op in ops)
    script = _SCRIPTS.get((name, types))
    if script is None:
        needed = {kind_of(op).lib for op in ops}
        # Once each, in registration order (a library may register several kinds).
        libs = tuple(dict.fromkeys(kind.lib for kind in registered() if kind.lib in needed))
        script = _BY_LIBS.get((name, libs))
        if script is None:
            script = _BY_LIBS[name, libs] = load_script(name, libs=["ops", *libs])
        _SCRIPTS[name, types] = script
    return script


def _named(name: str, libs: Sequence[str]) -> Script:
    script = _NAMED.get((name, tuple(libs)))
    if script is None:
        script = _NAMED[name, tuple(libs)] = load_script(name, libs=libs)
    return script


# What a call to Redis can raise; redis_errors.classify sorts outages from errors.
_REDIS_ERRORS = (redis.exceptions.RedisError, OSError)


class RedisBackend(Backend):
    """Guard state in Redis, shared by every process that uses the same server and prefix.

    Args:
        url: ``redis://[:password@]host[:port][/db]``, ``rediss://`` (TLS; pass ``ssl_*``
            options in ``redis_options`` or the URL query), or ``unix:///path?db=N``.
        keys: The key schema (prefix and hash tag).
        socket_timeout: Seconds before a read gives up. Keep it short: while Redis is down,
            the outage policy decides, and a long timeout only slows every task.
        socket_connect_timeout: Seconds before a connect gives up.
        outage_cooldown: Seconds to fail fast after a connection error (doubles while
            the outage lasts, up to 10 s).
        redis_options: Extra keyword arguments for :func:`redis.Redis.from_url`
            (``ssl_ca_certs``, ``ssl_certfile``, ``username``, ...).
        client: Use this client instead of building one from ``url``.
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        keys: KeySchema | None = None,
        socket_timeout: float = 0.5,
        socket_connect_timeout: float = 0.5,
        outage_cooldown: float = 0.5,
        redis_options: dict[str, Any] | None = None,
        client: redis.Redis | None = None,
    ) -> None:
        super().__init__(keys=keys)
        self.url = url
        self._options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_connect_timeout,
            # One quick retry heals a pooled connection broken by a server restart;
            # anything more would turn an outage into seconds of waiting per task.
            "retry": Retry(NoBackoff(), 1),
            "health_check_interval": 0,
            **(redis_options or {}),
        }
        self._given_client = client
        # Taken out of any error text that reaches a log or an exception.
        self._secrets = secrets_of(url, self._options.get("password"))
        self.breaker = OutageBreaker(cooldown=outage_cooldown)
        self._client = client or self._make_client()
        self._pid = os.getpid()

    def _make_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, **self._options)

    @property
    def client(self) -> redis.Redis:
        """The redis-py client (rebuilt in a forked child)."""
        if self._pid != os.getpid():
            self.reset_after_fork()
        return self._client

    @property
    def socket_timeout(self) -> float | None:
        """Seconds a read waits for a reply before it fails (None: no limit).

        A blocking command (``BLPOP``, ``XREADGROUP BLOCK``) sent through :meth:`commands`
        must ask to block for less than this, or an empty wait ends in a timeout, which
        counts as an outage.
        """
        timeout = self.client.connection_pool.connection_kwargs.get("socket_timeout")
        return float(timeout) if timeout is not None else None

    def __repr__(self) -> str:
        return f"RedisBackend({redact(self.url)!r}, prefix={self.keys.prefix!r})"

    def _failure(self, exc: BaseException, what: str) -> TaskGuardError:
        """The taskguard error for ``exc``; an outage opens the outage breaker.

        Only outages (see :mod:`.redis_errors`) become :class:`BackendUnavailable`, for the
        outage policies to decide; anything else is a :class:`BackendError`.
        """
        found = classify(exc)
        text = scrub(found.text, self._secrets)
        if found.kind == "error":
            return BackendError(f"redis error during {what}: {text}", code=found.code, what=what)
        if found.kind == "refused":  # answering, so no fail-fast: each call tries again
            return BackendUnavailable(
                f"redis refuses writes during {what}: {text}", code=found.code
            )
        cooldown = self.breaker.record_failure()
        state = "unreachable" if found.code is None else "unavailable"
        return BackendUnavailable(
            f"redis {state} during {what}: {text}", retry_after=cooldown, code=found.code
        )

    @contextmanager
    def commands(self, what: str) -> Iterator[redis.Redis]:
        """The port for plain commands: yields the client; errors become taskguard's.

        Use it for anything that is not a named script (pipelines, XRANGE, GET...). An
        outage (a lost connection, a timeout, ``LOADING``, ``READONLY``...) raises
        :class:`BackendUnavailable` and opens the outage breaker, so callers fail fast
        while Redis is down; ``OOM`` and ``MISCONF`` raise it too, without the breaker.
        Any other Redis error (``NOPERM``, ``WRONGPASS``, a script error...) raises
        :class:`~taskguard.errors.BackendError`.

        Args:
            what: Names the operation in error messages (``"cache SET"``).

        Example:
            >>> with backend.commands("session get") as client:  # doctest: +SKIP
            ...     client.get(key)
        """
        self.breaker.before_call()
        try:
            yield self.client
        except _REDIS_ERRORS as exc:
            raise self._failure(exc, what) from exc
        else:
            self.breaker.record_success()

    def run_script(
        self,
        name: str,
        keys: Sequence[str],
        args: Sequence[Any],
        *,
        what: str,
        libs: Sequence[str] = (),
    ) -> Any:
        """The port for scripts: run ``scripts/<name>.lua`` by EVALSHA in one round trip.

        Args:
            name: The script's file name without ``.lua`` (loaded once per process).
            keys: KEYS, every one built by :class:`taskguard.keys.KeySchema`.
            args: ARGV, as the script's header documents them.
            what: Names the operation in error messages.
            libs: Op libraries from ``scripts/lib/`` the script includes.

        Raises:
            BackendUnavailable: An outage (see :meth:`commands`).
            BackendError: Redis refused: a permission, authentication or script error.
        """
        return self._run(_named(name, libs), keys, args, what)

    def _run(self, script: Script, keys: Sequence[str], args: Sequence[Any], what: str) -> Any:
        # The hot path: a plain try/except (no context manager) around one EVALSHA.
        breaker = self.breaker
        breaker.before_call()
        try:
            reply = script(self.client, keys, args)
        except _REDIS_ERRORS as exc:
            raise self._failure(exc, what) from exc
        breaker.record_success()
        return reply

    def publish(self, channel: str, message: str, *, what: str = "PUBLISH") -> int:
        """Publish ``message`` on ``channel``; returns how many subscribers got it."""
        with self.commands(what) as client:
            return int(client.publish(channel, message))

    def pubsub(self) -> redis.client.PubSub:
        """A new pub/sub connection (subscription confirmations are not delivered)."""
        return self.client.pubsub(ignore_subscribe_messages=True)

    def run_script_many(
        self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]], *, what: str
    ) -> list[Any]:
        """The port for batches: ``scripts/<name>.lua`` once per ``(keys, args)``, pipelined
        in one round trip (each call atomic on its own, the batch not)."""
        if not calls:
            return []
        script = _named(name, ())
        with self.commands(what) as client:
            try:
                return _send(client, script, calls)
            except redis.exceptions.NoScriptError:
                # Nothing ran: every call of the batch failed the same way.
                client.script_load(script.source)
                return _send(client, script, calls)

    def admit(self, ops: Sequence[Op], *, reserve_within: float = 0.0) -> Admission:
        if not ops:
            return ALLOWED_EMPTY
        keys, args = _encode(ops, release=False)
        args[0:0] = [int(reserve_within * 1_000_000)]
        reply = self._run(_script("admit", ops), keys, args, "admission")
        allowed, wait_us, denied, reserved = reply[:4]
        if not allowed:
            return Admission(
                False,
                retry_after=wait_us / 1_000_000,
                denied=denied - 1,
                reserved=bool(reserved),
                remaining=0,
            )
        return granted(ops, reply[4:])

    def release(self, ops: Sequence[Held]) -> list[int]:
        if not ops:
            return []
        keys, args = _encode(ops, release=True)
        return [int(r) for r in self._run(_script("release", ops), keys, args, "release")]

    def renew(self, ops: Sequence[Held]) -> list[bool]:
        if not ops:
            return []
        keys, args = _encode(ops, release=False)
        return [bool(r) for r in self._run(_script("renew", ops), keys, args, "renewal")]

    def breaker_state(self, op: BreakerOp) -> str:
        with self.commands("breaker state"):
            pipe = self.client.pipeline(transaction=False)
            pipe.time()
            pipe.hmget(op.key, "state", "until", "forced")
            (seconds, micros), (state, until, forced) = pipe.execute()
        return effective_state(state, until, forced, seconds * 1000 + micros // 1000)

    def set_breaker(self, op: BreakerOp, action: str) -> None:
        with self.commands(f"breaker {action}"):
            pipe = self.client.pipeline(transaction=True)
            if action == "reset":
                pipe.delete(op.key, op.window_key, op.probes_key)
            elif action == "force_close":
                pipe.delete(op.window_key, op.probes_key)
                pipe.hset(op.key, items=[x for pair in CLOSED_FIELDS.items() for x in pair])
            else:
                pipe.hset(op.key, "forced", FORCED[action])
            pipe.pexpire(op.key, BREAKER_IDLE_MS)
            pipe.execute()

    def owner(self, key: str) -> str | None:
        with self.commands("GET"):
            value = self.client.get(key)
        return value.decode() if isinstance(value, bytes) else value

    def wait_for_wakeup(self, key: str, timeout: float) -> bool:
        # BLPOP in slices shorter than the socket timeout, so a wait never looks like a
        # dead server; a release pushes to the list and ends the wait at once.
        deadline = time.monotonic() + timeout
        slice_ = max(self._options["socket_timeout"] * 0.8, 0.05)
        while (left := deadline - time.monotonic()) > 0:
            # Redis 6.2 reads a timeout under 1 ms as 0, "block forever": never ask for it.
            wait = max(math.ceil(min(left, slice_) * 1000) / 1000, 0.01)
            with self.commands("BLPOP"):
                if self.client.blpop([key], timeout=wait):
                    return True
        return False

    def time(self) -> float:
        with self.commands("TIME"):
            seconds, micros = self.client.time()
        return float(seconds + micros / 1_000_000)

    def ping(self) -> None:
        with self.commands("PING"):
            self.client.ping()

    def close(self) -> None:
        self._client.close()

    def reset_after_fork(self) -> None:
        # The parent's sockets must not be shared: build a fresh pool and forget the
        # parent's outage state. The scripts stay cached server-side.
        self._pid = os.getpid()
        self.breaker.reset()
        if self._given_client is not None:
            self._given_client.connection_pool.reset()
            self._client = self._given_client
        else:
            self._client = self._make_client()


def _send(
    client: redis.Redis, script: Script, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    return list(pipe.execute())


def _encode(ops: Sequence[Op], *, release: bool) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for lib/ops.lua: n, then per op its kind's code, nkeys, argc, args."""
    keys: list[str] = []
    args: list[Any] = [len(ops)]
    for op in ops:
        kind = kind_of(op)
        op_keys, op_args = kind.encode(op, release)
        keys += op_keys
        args.append(kind.code)
        args.append(len(op_keys))
        args.append(len(op_args))
        args += op_args
    return keys, args


class HasBackend(Protocol):
    """Anything built on a backend, such as the :class:`taskguard.Client` façade."""

    @property
    def backend(self) -> Backend: ...


def require_redis(source: Backend | HasBackend, what: str) -> RedisBackend:
    """The Redis backend of ``source`` (a backend, or a client built on one).

    Raises:
        ConfigurationError: ``source`` is not on Redis (``what`` names who needs it).
    """
    backend = source if isinstance(source, Backend) else source.backend
    if not isinstance(backend, RedisBackend):
        raise ConfigurationError(
            f"the {what} needs a Redis backend (taskguard.connect('redis://...')), "
            f"not {type(backend).__name__}",
            field="backend",
        )
    return backend
