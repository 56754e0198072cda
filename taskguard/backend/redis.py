"""The Redis backend: one EVALSHA per admission, time from the server, fail fast when down."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from taskguard.errors import ConfigurationError, TaskGuardError
from taskguard.keys import KeySchema
from taskguard.urls import redact, secrets_of

from . import builtin_kinds  # noqa: F401 - registers the built-in op kinds
from .base import Backend
from .lane import Lanes
from .lua import Script
from .ops import ALLOWED_EMPTY, Admission, BreakerOp, Held, Op, RateOp
from .outage import OutageBreaker
from .redis_channels import MESSAGE_TYPES, RedisChannels
from .redis_lean import LeanRate
from .redis_spread import SpreadCalls
from .redis_wait import Waiting
from .spread import by_slot
from .spread_limits import RemoteLimits
from .topology import SlotRoutes, client_for, is_cluster
from .wire import (
    REDIS_ERRORS,
    admission_from,
    admit_call,
    batch_replies,
    breaker_read_call,
    breaker_state_from,
    client_options,
    encode,
    failure,
    named_script,
    not_loaded,
    queue_breaker_action,
    script_for,
)

__all__ = ["MESSAGE_TYPES", "RedisBackend", "require_redis"]


logger = logging.getLogger("taskguard.backend")


#: This process's id, kept current across forks: read on every call, where os.getpid()
#: would be a system call each time.
_pid = os.getpid()


def _forked() -> None:
    global _pid  # noqa: PLW0603 - one int, read on every call without a lookup chain
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


class RedisBackend(RedisChannels, SpreadCalls, LeanRate, Waiting, Backend):
    """Guard state in Redis, shared by every process that uses the same server and prefix.

    Args:
        url: ``redis://[:password@]host[:port][/db]``, ``rediss://`` (TLS; pass ``ssl_*``
            options in ``redis_options`` or the URL query), ``unix:///path?db=N``,
            ``redis+cluster://h1:p1,h2:p2/`` (Redis Cluster) or
            ``redis+sentinel://h1:p1,h2:p2/<service>/<db>`` (Sentinel); see
            :mod:`taskguard.backend.topology`.
        keys: The key schema (prefix and hash tag). On a Cluster it spreads (keyed guard
            state over the slots: docs/design.md, "Key schema").
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
        self._options = client_options(
            socket_timeout, socket_connect_timeout, Retry(NoBackoff(), 1), redis_options
        )
        self._given_client = client
        if self.topology == "cluster" and not self.keys.spread:
            self.keys = dataclasses.replace(self.keys, spread=True)
        self._limits = RemoteLimits(self._read_hash)
        # Taken out of any error text that reaches a log or an exception.
        self._secrets = secrets_of(url, self._options.get("password"))
        self.breaker = OutageBreaker(cooldown=outage_cooldown)
        # Built on first use: a RedisCluster client connects as it is made, and a backend
        # made while Redis is down must still work (its calls fail as outages).
        self._client: redis.Redis | None = client
        self._routes = SlotRoutes(client) if client is not None and is_cluster(client) else None
        self._client_lock = threading.Lock()
        self._pid = _pid
        self._lanes = Lanes()  # this thread's connection for scripts (lane.py)
        self._no_override: dict[tuple[str, str], float] = {}  # see LeanRate
        self._lean_ops: dict[int, tuple[RateOp, RateOp]] = {}

    def _make_client(self) -> redis.Redis:
        return client_for(self.url, self._options)

    @property
    def client(self) -> redis.Redis:
        """The redis-py client (rebuilt in a forked child)."""
        if self._pid != _pid:
            self.reset_after_fork()
        client = self._client
        if client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._make_client()
                    self._routes = SlotRoutes(self._client) if is_cluster(self._client) else None
                client = self._client
        return client

    @property
    def socket_timeout(self) -> float | None:
        """Seconds a read waits for a reply before it fails (None: no limit).

        A blocking command (``BLPOP``, ``XREADGROUP BLOCK``) sent through :meth:`commands`
        must ask to block for less than this, or an empty wait ends in a timeout, which
        counts as an outage.
        """
        pool = getattr(self._given_client, "connection_pool", None)
        kwargs = pool.connection_kwargs if pool is not None else self._options
        timeout = kwargs.get("socket_timeout")
        return float(timeout) if timeout is not None else None

    def __repr__(self) -> str:
        return f"RedisBackend({redact(self.url)!r}, prefix={self.keys.prefix!r})"

    def _failure(self, exc: BaseException, what: str) -> TaskGuardError:
        """The taskguard error for ``exc``; an outage opens the outage breaker
        (see :func:`taskguard.backend.wire.failure`)."""
        return failure(exc, what, self._secrets, self.breaker)

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
        except REDIS_ERRORS as exc:
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
        return self._run(named_script(name, libs), keys, args, what)

    def _run(
        self,
        script: Script,
        keys: Sequence[str],
        args: Sequence[Any],
        what: str,
        guarded: bool = True,
    ) -> Any:
        # The hot path: a plain try/except (no context manager) around one EVALSHA, the
        # breaker and the fork check read inline (one attribute each while all is well).
        # Not `guarded`: an undo on a live slot while the breaker may be open for another
        # (redis_spread.py); it neither waits for the breaker nor closes it.
        breaker = self.breaker
        if breaker.failures and guarded:
            breaker.before_call()
        client = self._client if self._pid == _pid else None
        if client is None:  # not made yet, or made in the parent before a fork
            client = self.client
        routes = self._routes
        try:
            if routes is not None and keys:  # Redis Cluster: straight to the slot's master
                try:
                    reply = self._lanes.lane(routes.client_for(keys[0])).evalsha(script, keys, args)
                except SlotRoutes.NOT_RUN:
                    routes.forget()
                    reply = script(client, keys, args)
            else:
                reply = self._lanes.lane(client).evalsha(script, keys, args)
        except REDIS_ERRORS as exc:
            if routes is not None:
                routes.forget()
            raise self._failure(exc, what) from exc
        if breaker.failures and guarded:
            breaker.record_success()
        return reply

    def run_script_many(
        self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]], *, what: str
    ) -> list[Any]:
        """The port for batches: ``scripts/<name>.lua`` once per ``(keys, args)``, pipelined
        in one round trip (each call atomic on its own, the batch not)."""
        if not calls:
            return []
        script = named_script(name, ())
        with self.commands(what) as client:
            replies = _send(client, script, calls)
            if missing := not_loaded(replies):
                client.script_load(script.source)  # every master, on Redis Cluster
                again = _send(client, script, [calls[i] for i in missing])
                return batch_replies(replies, missing, again)
            return batch_replies(replies, (), ())

    def admit(self, ops: Sequence[Op], *, reserve_within: float = 0.0) -> Admission:
        if not ops:
            return ALLOWED_EMPTY
        if self.keys.spread:
            ops = self._limits.localize(ops)  # run-time limits from another slot
            if len(ops) > 1 and len(groups := by_slot(ops)) > 1:
                return self._admit_spread(ops, groups, reserve_within)
        op = ops[0]
        if len(ops) > 1 or type(op) is not RateOp or op.overrides is None:
            return self._admit_slot(ops, reserve_within)
        return self._admit_rate(op, op.overrides, reserve_within)

    def _admit_slot(self, ops: Sequence[Op], reserve_within: float) -> Admission:
        script, keys, args = admit_call(ops, reserve_within)
        return admission_from(ops, self._run(script, keys, args, "admission"))

    def release(self, ops: Sequence[Held]) -> list[int]:
        if not ops:
            return []
        if self.keys.spread:
            ops = self._limits.localize(ops)
            if len(ops) > 1:
                return self._release_spread(ops)  # one call per slot
        return self._release_slot(ops)

    def _release_slot(self, ops: Sequence[Held], guarded: bool = True) -> list[int]:
        keys, args = encode(ops, release=True)
        script = script_for("release", ops)
        return [int(r) for r in self._run(script, keys, args, "release", guarded)]

    def renew(self, ops: Sequence[Held]) -> list[bool]:
        if not ops:
            return []
        if self.keys.spread:
            ops = self._limits.localize(ops)
            if len(ops) > 1:
                return self._renew_spread(ops)  # one call per slot
        return self._renew_slot(ops)

    def _renew_slot(self, ops: Sequence[Held]) -> list[bool]:
        keys, args = encode(ops, release=False)
        return [bool(r) for r in self._run(script_for("renew", ops), keys, args, "renewal")]

    def breaker_state(self, op: BreakerOp) -> str:
        script, keys, args = breaker_read_call(op)
        return breaker_state_from(self._run(script, keys, args, "breaker state"))

    def set_breaker(self, op: BreakerOp, action: str) -> None:
        with self.commands(f"breaker {action}"):
            pipe = self.client.pipeline(transaction=True)
            queue_breaker_action(pipe, op, action)
            pipe.execute()

    def owner(self, key: str) -> str | None:
        with self.commands("GET"):
            value = self.client.get(key)
        return value.decode() if isinstance(value, bytes) else value

    def time(self) -> float:
        with self.commands("TIME"):
            seconds, micros = self.client.time()
        return float(seconds + micros / 1_000_000)

    def ping(self) -> None:
        with self.commands("PING"):
            self.client.ping()

    def close(self) -> None:
        self._lanes.drop()
        if self._client is not None:
            self._client.close()

    def reset_after_fork(self) -> None:
        # The parent's sockets must not be shared: build a fresh pool and forget the
        # parent's outage state. The scripts stay cached server-side.
        _forked()  # also for a caller who forked without Python's fork hooks
        self._pid = _pid
        self._lanes = Lanes()  # the parent's are its connections: never sent on here
        self.breaker.reset()
        self._client_lock = threading.Lock()  # another thread may have held it at fork
        if self._given_client is not None:
            # A RedisCluster has no single pool: its node pools check the pid themselves.
            pool = getattr(self._given_client, "connection_pool", None)
            if pool is not None:
                pool.reset()
            self._client = self._given_client
        else:
            self._client = self._routes = None  # made again on first use
        if self._routes is not None:
            self._routes.forget()


def _send(
    client: redis.Redis, script: Script, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    return list(pipe.execute(raise_on_error=False))


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
