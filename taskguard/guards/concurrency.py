"""Global concurrency caps: a leased semaphore in Redis, and a process-local one.

Holders are leases in a sorted set scored by expiry: the acquire script prunes expired
holders before counting, and the heartbeat renews the leases of live holders, so a killed
worker's slots come back within the lease TTL, and no counter can leak.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from taskguard import signals
from taskguard._validate import count, seconds
from taskguard._validate import name as check_name
from taskguard.backend.ops import Admission, Op, SlotOp, new_owner
from taskguard.errors import ConcurrencyLimitReached, ConfigurationError
from taskguard.keys import KeySchema

from .base import DEFER, Decision, Guard, RunContext, Verdict, check_outage_policy
from .fairness import FairShare
from .keying import KeyFunc, KeySource, tag_func
from .leases import HeldLease, LeasedPrimitive
from .perkey import PerKey

if TYPE_CHECKING:
    from taskguard.backend.base import Backend

__all__ = ["Concurrency", "ConcurrencyControl", "Semaphore"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class Concurrency(Guard):
    """At most ``limit`` runs at once per key, across the fleet.

    Args:
        limit: Slots per key.
        key: Template over the task's arguments (``"{tenant_id}"``) or a callable: one
            cap per value. None: one cap for every call.
        wait: Seconds to wait in the worker for a slot, woken by a release, before the
            task is deferred.
        retry_delay: Longest deferral after a refused slot (the holders' leases are
            renewed, so their expiry says little about when they finish).
        ttl: Lease seconds; a killed worker's slot comes back within this.
        name: Cap name; tasks sharing a name share slots. Defaults to the task name.
        on_outage: ``"deny"`` (default), ``"allow"`` or ``"local"`` while Redis is down.
        fair: Template (``"{tenant}"``) or callable naming each task's group: tasks
            parked on a full cap are handed back by weighted fair queuing between groups
            rather than first in, first out, so one group's backlog cannot starve another.
        weights: Weight per ``fair`` group (default 1): its share of the slots while
            several groups wait.
        per_key: Slot counts for some keys: a mapping of rendered key to limit
            (``{"acme": 10}``) or a callable taking the key and returning a limit or
            ``None`` (this cap's own ``limit``).
        tag: On a Redis Cluster, the source of this guard's hash tag instead of its key:
            a template or callable like ``key`` (``"{customer_id}"``), so guards keyed
            differently share a slot and a task's admission stays one call. It must be
            a function of the key. Ignored on one server and on Sentinel.

    A slot count set at run time (``taskguard limit set NAME 3 --kind cap``, or
    :meth:`taskguard.Client.set_cap`) wins over ``limit`` and ``per_key``: it is read
    inside the admission script (docs/concurrency.md, "Changing a cap at run time").
    """

    kind = "concurrency"
    admission_rank = 20
    settings_fields = frozenset(
        {
            "limit",
            "key",
            "wait",
            "retry_delay",
            "ttl",
            "name",
            "on_outage",
            "fair",
            "weights",
            "per_key",
            "tag",
        }
    )
    settings_bare = "limit"
    _positional = ("limit",)
    _key_field = "concurrency.key"
    limit: int
    key: KeyFunc
    wait: float
    retry_delay: float
    ttl: float
    name: str | None
    on_outage: str
    fair: FairShare | None
    per_key: PerKey[int] | None
    tag: KeyFunc
    _signature: inspect.Signature | None

    def __init__(
        self,
        limit: int,
        *,
        key: KeySource = None,
        wait: float = 0.0,
        retry_delay: float = 1.0,
        ttl: float = 60.0,
        name: str | None = None,
        on_outage: str = "deny",
        fair: KeySource = None,
        weights: Mapping[str, float] | None = None,
        per_key: Mapping[str, int] | Callable[[str | None], Any] | None = None,
        tag: KeySource = None,
    ) -> None:
        name = None if name is None else check_name(name, "name")
        if weights is not None and fair is None:
            raise ConfigurationError("weights need a fair key", field="weights")
        self._set(
            fair=None if fair is None else FairShare(fair, weights),
            per_key=None if per_key is None else PerKey(per_key, count, "per_key"),
            limit=count(limit, "limit"),
            key=KeyFunc(key),
            wait=seconds(wait, "wait", allow_zero=True),
            retry_delay=seconds(retry_delay, "retry_delay"),
            ttl=seconds(ttl, "ttl"),
            name=name,
            on_outage=check_outage_policy(on_outage),
            tag=tag_func(tag, KeyFunc(key)),
            _signature=None,
        )

    def _fields(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "key": self.key.source,
            "wait": self.wait,
            "retry_delay": self.retry_delay,
            "ttl": self.ttl,
            "name": self.name,
            "on_outage": self.on_outage,
            "fair": None if self.fair is None else self.fair.key.source,
            "weights": None if self.fair is None or not self.fair.weights else self.fair.weights,
            "per_key": None if self.per_key is None else self.per_key.source,
            "tag": self.tag.source,
        }

    def bind(self, task_name: str, signature: inspect.Signature | None) -> Concurrency:
        if self.fair is not None:
            try:
                self.fair.key.validate(signature)
            except ConfigurationError as exc:
                raise ConfigurationError(
                    exc.reason, task=task_name, field="concurrency.fair"
                ) from None
        return super().bind(task_name, signature)

    def fair_group(
        self, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> tuple[str, float] | None:
        """The fair-share group of one call and its weight (None without ``fair``)."""
        return None if self.fair is None else self.fair.group(args, kwargs, self._signature)

    def bucket(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
        return self.key.render(args, kwargs, self._signature)

    def slot_op(
        self,
        keys: KeySchema,
        bucket: str | None,
        owner: str,
        *,
        park: bool = True,
        tag: str | None = None,
    ) -> SlotOp:
        """The op taking one of the ``bucket``'s slots for ``owner``; with ``park``, a
        task refused it parks on the slots' lot (see docs/design.md, "Parking").

        On a spread schema a keyed cap has its own slot, and its lot and the lots' index
        with it; the slot counts set at run time are under the prefix's tag, apart: the
        backend reads those itself (:mod:`taskguard.backend.spread_limits`)."""
        name = self.name or ""
        slots = keys.slots(name, bucket, tag=tag)
        return SlotOp(
            slots,
            owner=owner,
            ttl=self.ttl,
            limit=self.limit if self.per_key is None else self.per_key.get(bucket, self.limit),
            wakeup_key=keys.slot_wakeup(name, bucket, tag=tag),
            park_key=keys.park_lot(slots) if park else None,
            park_due=keys.park_due(slots) if park else None,
            overrides=keys.cap_overrides(name),
            field="*" if bucket is None else f"k:{bucket}",
        )

    def task_ops(
        self, keys: KeySchema, args: Sequence[Any], kwargs: Mapping[str, Any], task_id: str
    ) -> list[Op]:
        owner = f"{task_id}:{new_owner()}"
        return [
            self.slot_op(keys, self.bucket(args, kwargs), owner, tag=self.tag_for(args, kwargs))
        ]

    def conflict_delay(self, retry_after: float) -> float:
        return min(retry_after, self.retry_delay)

    def on_admitted(self, op: Op, token: int, run: RunContext) -> bool:
        if isinstance(op, SlotOp):
            signals.slot_acquired.send(
                sender=run.sender, task_id=run.task_id, key=op.key, limit=op.limit
            )
        return False

    def on_denied(self, op: Op, retry_after: float, run: RunContext) -> Verdict:
        if isinstance(op, SlotOp):
            signals.slot_denied.send(
                sender=run.sender,
                task_id=run.task_id,
                key=op.key,
                limit=op.limit,
                retry_after=retry_after,
            )
        return DEFER

    def denied_error(self, retry_after: float, key: str | None = None) -> ConcurrencyLimitReached:
        return ConcurrencyLimitReached(
            f"{self!r}: all {self.limit} slots of {key!r} are taken",
            guard=repr(self),
            key=key,
            retry_after=retry_after,
        )


class Semaphore(LeasedPrimitive):
    """A fleet-wide semaphore outside of Celery: ``taskguard.connect(url).semaphore(...)``.

    ``limit`` may be changed on the object at any time; lowering it admits no one new
    until the holders fall below it.

    Example:
        >>> import taskguard
        >>> heavy = taskguard.connect("memory://").semaphore("heavy", limit=2)
        >>> with heavy.acquire(timeout=1):
        ...     heavy.try_acquire().allowed
        True
        >>> heavy.run(sum, [1, 2, 3])
        6
    """

    def __init__(
        self, backend: Backend, name: str, *, limit: int, ttl: float = 60.0, renew: bool = True
    ) -> None:
        self.backend = backend
        self.name = check_name(name, "name")
        self.limit = count(limit, "limit")
        self.ttl = seconds(ttl, "ttl")
        self.renew = renew
        super().__init__()
        keys = backend.keys
        self._keys = (
            keys.slots(self.name),
            keys.slot_wakeup(self.name),
            keys.cap_overrides(self.name),
        )

    def __repr__(self) -> str:
        return f"<Semaphore {self.name!r} limit={self.limit} on {self.backend!r}>"

    def _spec(self) -> Concurrency:
        # Rebuilt only when `limit` was changed on the object.
        spec = self.__dict__.get("_cached_spec")
        if spec is None or spec.limit != self.limit:
            spec = self.__dict__["_cached_spec"] = Concurrency(
                self.limit, ttl=self.ttl, name=self.name
            )
        return spec

    def _ops(self) -> list[Op]:
        limit = self._spec().limit  # validated again only when `limit` was changed
        slots, wakeup, overrides = self._keys
        return [SlotOp(slots, new_owner(), self.ttl, limit, wakeup, overrides=overrides)]

    def _decision(self, op: Op, admission: Admission) -> Decision:
        if not admission.allowed:
            return Decision(False, retry_after=admission.retry_after, key=self.name)
        lease = HeldLease(self.backend, cast(SlotOp, op), renew=self.renew)
        return Decision(True, key=self.name, lease=lease)

    @property
    def _wakeup_key(self) -> str:
        return self._keys[1]

    def _refused(self, retry_after: float) -> ConcurrencyLimitReached:
        return ConcurrencyLimitReached(
            f"all {self.limit} slots of {self.name!r} are taken",
            key=self.name,
            retry_after=retry_after,
        )

    def run(
        self, func: Callable[..., T], *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> T:
        """Call ``func(*args, **kwargs)`` holding a slot (the seed's ``run(fn)``)."""
        with self.acquire(timeout):
            return func(*args, **kwargs)


class ConcurrencyControl:
    """At most ``max_concurrent`` calls at once inside this process: threads or asyncio.

    For capping work fanned out *inside* one task (the seed's ``ConcurrencyControl``).

    Args:
        max_concurrent: Calls allowed at once.
        queue_timeout: Seconds a call may wait for its turn (None: no limit); past it,
            ConcurrencyLimitReached.

    Example:
        >>> import asyncio
        >>> control = ConcurrencyControl(max_concurrent=2, queue_timeout=5)
        >>> async def fetch(n):
        ...     return n * 2
        >>> async def main():
        ...     return await asyncio.gather(*(control.run_async(fetch, n) for n in range(4)))
        >>> asyncio.run(main())
        [0, 2, 4, 6]
    """

    def __init__(self, max_concurrent: int, queue_timeout: float | None = None) -> None:
        self.max_concurrent = count(max_concurrent, "limit")
        self.queue_timeout = (
            None if queue_timeout is None else seconds(queue_timeout, "queue_timeout")
        )
        self._threads = threading.BoundedSemaphore(self.max_concurrent)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self._guard = threading.Lock()

    def _refuse(self) -> ConcurrencyLimitReached:
        return ConcurrencyLimitReached(
            f"no turn within {self.queue_timeout}s ({self.max_concurrent} at once)",
            retry_after=0.0,
        )

    def run(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``func`` in this thread once a turn is free."""
        if not self._threads.acquire(timeout=self.queue_timeout):
            raise self._refuse()
        try:
            return func(*args, **kwargs)
        finally:
            self._threads.release()

    async def run_async(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await ``func(*args, **kwargs)`` once a turn is free in this event loop."""
        semaphore = self._semaphore()
        try:
            await asyncio.wait_for(semaphore.acquire(), self.queue_timeout)
        except asyncio.TimeoutError:
            raise self._refuse() from None
        try:
            return await func(*args, **kwargs)
        finally:
            semaphore.release()

    def _semaphore(self) -> asyncio.Semaphore:
        # One asyncio semaphore per running loop: they cannot be shared across loops.
        loop = asyncio.get_running_loop()
        with self._guard:
            if loop not in self._loops:
                self._loops[loop] = asyncio.Semaphore(self.max_concurrent)
            return self._loops[loop]

    def __call__(self, func: F) -> F:
        """Use as a decorator, on a plain or an ``async`` function."""
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await self.run_async(func, *args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return self.run(func, *args, **kwargs)

        return wrapper  # type: ignore[return-value]
