"""The asyncio Redis backend: the sync backend's scripts and keys, on ``redis.asyncio``.

Everything but the I/O comes from :mod:`taskguard.backend.wire`, which the sync
:class:`~taskguard.backend.RedisBackend` uses too: the same script (and SHA) per op list,
the same KEYS and ARGV, the same reading of replies and of errors. So a Celery worker and
an asyncio service on one Redis and one prefix share every bucket, lock, slot and breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from taskguard.backend.lua import Script
from taskguard.backend.memory import MemoryBackend
from taskguard.backend.ops import ALLOWED_EMPTY, Admission, BreakerOp, Held, Op
from taskguard.backend.outage import OutageBreaker
from taskguard.backend.spread import (
    by_slot,
    granted_across,
    in_order,
    refused_across,
    undo_ops,
)
from taskguard.backend.spread_limits import RemoteLimits, text_hash
from taskguard.backend.topology import async_client_for, is_cluster
from taskguard.backend.wire import (
    REDIS_ERRORS,
    admission_from,
    admit_call,
    batch_replies,
    blpop_slice,
    blpop_timeout,
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
from taskguard.errors import TaskGuardError
from taskguard.keys import KeySchema
from taskguard.urls import redact, secrets_of

from .base import AsyncBackend

__all__ = ["AsyncRedisBackend"]

OpT = TypeVar("OpT")

# redis.asyncio turns its own timeouts into redis's TimeoutError; a bare asyncio one (not
# an OSError before Python 3.11) still means the server did not answer in time.
_ERRORS = (*REDIS_ERRORS, asyncio.TimeoutError)


class AsyncRedisBackend(AsyncBackend):
    """Guard state in Redis, awaited: the asyncio twin of :class:`RedisBackend`.

    Its options are the sync backend's, with the same defaults: short socket timeouts, one
    immediate retry, and a per-process outage breaker that fails fast while Redis is down.

    Args:
        url: ``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://`` or
            ``redis+sentinel://`` (see :mod:`taskguard.backend.topology`).
        keys: The key schema (prefix and hash tag).
        socket_timeout: Seconds before a read gives up.
        socket_connect_timeout: Seconds before a connect gives up.
        outage_cooldown: Seconds to fail fast after a connection error (doubling).
        redis_options: Extra keyword arguments for ``redis.asyncio.Redis.from_url``.
        client: Use this ``redis.asyncio`` client instead of building one from ``url``.
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
        client: redis.asyncio.Redis | None = None,
    ) -> None:
        super().__init__(keys=keys)
        self.url = url
        self._options = client_options(
            socket_timeout, socket_connect_timeout, Retry(NoBackoff(), 1), redis_options
        )
        self._secrets = secrets_of(url, self._options.get("password"))
        self.breaker = OutageBreaker(cooldown=outage_cooldown)
        self.client: redis.asyncio.Redis = client or async_client_for(url, self._options)
        if is_cluster(self.client) and not self.keys.spread:
            # As the sync backend on a Cluster: keyed guard state over the slots, admitted
            # a call per slot (taskguard.backend.spread), so both share every key.
            self.keys = dataclasses.replace(self.keys, spread=True)
        # Read here (awaited) before each use: see _localized.
        self._limits = RemoteLimits(lambda name: {})

    def __repr__(self) -> str:
        return f"AsyncRedisBackend({redact(self.url)!r}, prefix={self.keys.prefix!r})"

    @property
    def socket_timeout(self) -> float | None:
        """Seconds a read waits for a reply (a blocking command must ask for less)."""
        pool = getattr(self.client, "connection_pool", None)  # none on RedisCluster
        kwargs = pool.connection_kwargs if pool is not None else self._options
        timeout = kwargs.get("socket_timeout")
        return float(timeout) if timeout is not None else None

    @functools.cached_property
    def offline(self) -> MemoryBackend:
        return MemoryBackend(keys=self.keys)

    def _failure(self, exc: BaseException, what: str) -> TaskGuardError:
        if isinstance(exc, asyncio.TimeoutError) and not isinstance(exc, OSError):
            exc = redis.exceptions.TimeoutError(f"no reply in time ({what})")
        return failure(exc, what, self._secrets, self.breaker)

    @asynccontextmanager
    async def commands(self, what: str) -> AsyncIterator[redis.asyncio.Redis]:
        """The port for plain commands, as ``RedisBackend.commands``: yields the client;
        an outage raises :class:`BackendUnavailable`, any other Redis error
        :class:`BackendError`.

        Example:
            >>> async with backend.commands("session get") as client:  # doctest: +SKIP
            ...     await client.get(key)
        """
        self.breaker.before_call()
        try:
            yield self.client
        except _ERRORS as exc:
            raise self._failure(exc, what) from exc
        else:
            self.breaker.record_success()

    async def run_script(
        self,
        name: str,
        keys: Sequence[str],
        args: Sequence[Any],
        *,
        what: str,
        libs: Sequence[str] = (),
    ) -> Any:
        """The port for scripts: ``scripts/<name>.lua`` by EVALSHA (``RedisBackend.run_script``)."""
        return await self._run(named_script(name, libs), keys, args, what)

    async def run_script_many(
        self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]], *, what: str
    ) -> list[Any]:
        """The port for batches: ``scripts/<name>.lua`` once per ``(keys, args)``,
        pipelined in one round trip (``RedisBackend.run_script_many``)."""
        if not calls:
            return []
        script = named_script(name, ())
        async with self.commands(what) as client:
            replies = await _send(client, script, calls)
            if missing := not_loaded(replies):
                await client.script_load(script.source)  # every master, on Redis Cluster
                again = await _send(client, script, [calls[i] for i in missing])
                return batch_replies(replies, missing, again)
            return batch_replies(replies, (), ())

    async def _run(
        self,
        script: Script,
        keys: Sequence[str],
        args: Sequence[Any],
        what: str,
        guarded: bool = True,
    ) -> Any:
        breaker = self.breaker
        if guarded:  # not: an undo on a live slot (see _undo)
            breaker.before_call()
        try:
            reply = await script.call_async(self.client, keys, args)
        except _ERRORS as exc:
            raise self._failure(exc, what) from exc
        if guarded:
            breaker.record_success()
        return reply

    async def _localized(self, ops: Sequence[OpT]) -> Sequence[OpT]:
        """Spread schema: ``ops`` with limits set at run time in another slot applied
        (:mod:`taskguard.backend.spread_limits`)."""
        for name in self._limits.stale(ops):
            async with self.commands("run-time limits") as client:
                self._limits.store(name, text_hash(await client.hgetall(name)))
        return self._limits.localize(ops)

    async def admit(self, ops: Sequence[Op], *, reserve_within: float = 0.0) -> Admission:
        if not ops:
            return ALLOWED_EMPTY
        if self.keys.spread:
            ops = await self._localized(ops)
            if len(ops) > 1 and len(groups := by_slot(ops)) > 1:
                return await self._admit_spread(ops, groups)
        script, keys, args = admit_call(ops, reserve_within)
        return admission_from(ops, await self._run(script, keys, args, "admission"))

    async def _admit_spread(self, ops: Sequence[Op], groups: list[list[int]]) -> Admission:
        # RedisBackend's SpreadCalls, awaited: a call per slot in a fixed order, no
        # reservation, and what earlier slots took given back when a later one refuses.
        taken: list[list[int]] = []
        admissions: list[Admission] = []
        for group in groups:
            try:
                admission = await self.admit([ops[i] for i in group])
            except TaskGuardError:
                await self._undo(ops, taken)
                raise
            if not admission.allowed:
                await self._undo(ops, taken)
                return refused_across(group, admission)
            taken.append(group)
            admissions.append(admission)
        return granted_across(ops, groups, admissions)

    async def _undo(self, ops: Sequence[Op], taken: Sequence[Sequence[int]]) -> None:
        # Past the outage breaker, which the failed later slot may have opened: the
        # earlier slots' masters may well be up. A failure leaves them to expire by TTL.
        for group in taken:
            if undone := undo_ops(ops, group):
                keys, args = encode(undone, release=True)
                with contextlib.suppress(TaskGuardError):
                    await self._run(script_for("release", undone), keys, args, "release", False)

    async def release(self, ops: Sequence[Held]) -> list[int]:
        if not ops:
            return []
        if self.keys.spread:
            ops = await self._localized(ops)
            if len(ops) > 1 and len(groups := by_slot(ops)) > 1:
                released = [await self.release([ops[i] for i in g]) for g in groups]
                return in_order(groups, released, len(ops))
        keys, args = encode(ops, release=True)
        replies = await self._run(script_for("release", ops), keys, args, "release")
        return [int(r) for r in replies]

    async def renew(self, ops: Sequence[Held]) -> list[bool]:
        if not ops:
            return []
        if self.keys.spread:
            ops = await self._localized(ops)
            if len(ops) > 1 and len(groups := by_slot(ops)) > 1:
                renewed = [await self.renew([ops[i] for i in g]) for g in groups]
                return in_order(groups, renewed, len(ops))
        keys, args = encode(ops, release=False)
        replies = await self._run(script_for("renew", ops), keys, args, "renewal")
        return [bool(r) for r in replies]

    async def breaker_state(self, op: BreakerOp) -> str:
        script, keys, args = breaker_read_call(op)
        return breaker_state_from(await self._run(script, keys, args, "breaker state"))

    async def set_breaker(self, op: BreakerOp, action: str) -> None:
        async with self.commands(f"breaker {action}") as client:
            pipe = client.pipeline(transaction=True)
            queue_breaker_action(pipe, op, action)
            await pipe.execute()

    async def owner(self, key: str) -> str | None:
        async with self.commands("GET") as client:
            value = await client.get(key)
        return value.decode() if isinstance(value, bytes) else value

    async def wait_for_wakeup(self, key: str, timeout: float) -> bool:
        # As the sync backend: BLPOP in slices shorter than the socket timeout, on the
        # same wake-up lists, so a sync release wakes an async waiter and vice versa.
        deadline = time.monotonic() + timeout
        slice_ = blpop_slice(self._options["socket_timeout"])
        while (left := deadline - time.monotonic()) > 0:
            async with self.commands("BLPOP") as client:
                if await client.blpop([key], timeout=blpop_timeout(left, slice_)):
                    return True
        return False

    async def time(self) -> float:
        """The server's clock, in seconds since the epoch (Redis ``TIME``)."""
        async with self.commands("TIME") as client:
            seconds, micros = await client.time()
        return float(seconds + micros / 1_000_000)

    async def ping(self) -> None:
        async with self.commands("PING") as client:
            await client.ping()

    async def aclose(self) -> None:
        await super().aclose()
        close = getattr(self.client, "aclose", None)  # redis-py >= 5.0.1
        await (close() if close is not None else self.client.close())


async def _send(
    client: redis.asyncio.Redis,
    script: Script,
    calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    return list(await pipe.execute(raise_on_error=False))
