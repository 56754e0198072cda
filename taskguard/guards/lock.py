"""Distributed locks: owner-checked leases with fencing tokens, and task uniqueness.

A lock is a lease on one Redis key holding its owner's token. Acquire, release and extend
check the owner in Lua, so no one can free someone else's lock; the heartbeat renews it
while held, so a short TTL is safe for a long task and a killed holder's lock comes back
within that TTL. Every acquire hands out a fencing token that increases per lock across
all holders: Redis locks alone only make duplicate work rare; the protected resource must
check the token to make it impossible (see docs/locks.md).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from taskguard import signals
from taskguard._validate import choice, seconds
from taskguard._validate import name as check_name
from taskguard.backend.ops import Admission, LeaseOp, Op, new_owner
from taskguard.errors import ConfigurationError, LockHeld
from taskguard.keys import KeySchema

from .base import DEFER, Decision, Guard, RunContext, Verdict, check_outage_policy
from .keying import KeyFunc, KeySource, tag_func
from .leases import HeldLease, LeasedPrimitive

if TYPE_CHECKING:
    from taskguard.backend.base import Backend

__all__ = ["MODES", "DistributedLock", "HeldLock", "Lock"]

F = TypeVar("F", bound=Callable[..., Any])

#: Uniqueness modes. ``while_executing``: one run at a time (run-time lock).
#: ``until_executing``: one queued message at a time, claimed at publish and released
#: when it starts. ``until_executed``: claimed at publish, released when it ends.
MODES = (
    "while_executing",
    "until_executing",
    "until_executed",
    "until_executing+while_executing",
)
CONFLICT_POLICIES = ("defer", "skip", "fail")
DUPLICATE_POLICIES = ("return", "raise")


class Lock(Guard):
    """One run at a time per key, across the fleet; optionally one queued message too.

    Args:
        key: Template over the task's arguments (``"{account_id}"``) or a callable; None
            makes one lock for every call of the task.
        ttl: Lease seconds. The heartbeat renews it every ``ttl / 3`` while the task runs,
            so it only bounds how long a crashed holder blocks others.
        mode: One of :data:`MODES` (default ``"while_executing"``).
        on_conflict: When the run-time lock is held: ``"defer"`` (come back later),
            ``"skip"`` (drop this run, logged and signalled) or ``"fail"`` (LockHeld).
        wait: Seconds to wait in the worker for the holder's release (woken by it, not
            polling) before ``on_conflict`` applies.
        queue_ttl: Seconds a publish-time claim lasts, covering time in the queue, so a
            message lost by the broker cannot lock its key forever.
        on_duplicate: At publish, a duplicate ``"return"``s the queued task's
            AsyncResult, or ``"raise"``s AlreadyQueued.
        name: Lock name; tasks sharing a name share locks. Defaults to the task name.
        on_outage: ``"deny"`` (default: defer while Redis is down), ``"allow"`` or
            ``"local"``.
        tag: On a Redis Cluster, the source of this guard's hash tag instead of its key:
            a template or callable like ``key`` (``"{customer_id}"``), so guards keyed
            differently share a slot and a task's admission stays one call. It must be
            a function of the key. Ignored on one server and on Sentinel.
    """

    kind = "lock"
    admission_rank = 10
    settings_fields = frozenset(
        {
            "key",
            "ttl",
            "mode",
            "on_conflict",
            "wait",
            "queue_ttl",
            "on_duplicate",
            "name",
            "on_outage",
            "tag",
        }
    )
    _key_field = "lock.key"
    key: KeyFunc
    ttl: float
    mode: str
    on_conflict: str
    wait: float
    queue_ttl: float
    on_duplicate: str
    name: str | None
    on_outage: str
    tag: KeyFunc
    _signature: inspect.Signature | None

    def __init__(
        self,
        key: KeySource = None,
        *,
        ttl: float = 60.0,
        mode: str = "while_executing",
        on_conflict: str = "defer",
        wait: float = 0.0,
        queue_ttl: float = 3600.0,
        on_duplicate: str = "return",
        name: str | None = None,
        on_outage: str = "deny",
        tag: KeySource = None,
    ) -> None:
        name = None if name is None else check_name(name, "name")
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait < 3600:
            raise ConfigurationError(f"must be seconds in [0, 3600), got {wait!r}", field="wait")
        self._set(
            key=KeyFunc(key),
            ttl=seconds(ttl, "ttl"),
            mode=choice(mode, "mode", MODES),
            on_conflict=choice(on_conflict, "on_conflict", CONFLICT_POLICIES),
            wait=float(wait),
            queue_ttl=seconds(queue_ttl, "queue_ttl"),
            on_duplicate=choice(on_duplicate, "on_duplicate", DUPLICATE_POLICIES),
            name=name,
            on_outage=check_outage_policy(on_outage),
            tag=tag_func(tag, KeyFunc(key)),
            _signature=None,
        )

    def _fields(self) -> dict[str, Any]:
        return {
            "key": self.key.source,
            "ttl": self.ttl,
            "mode": self.mode,
            "on_conflict": self.on_conflict,
            "wait": self.wait,
            "queue_ttl": self.queue_ttl,
            "on_duplicate": self.on_duplicate,
            "name": self.name,
            "on_outage": self.on_outage,
            "tag": self.tag.source,
        }

    @property
    def runtime(self) -> bool:
        """True when the mode takes a lock for the run itself."""
        return "while_executing" in self.mode

    @property
    def at_publish(self) -> bool:
        """True when the mode claims the key when the task is published."""
        return "until_" in self.mode

    def bucket(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
        return self.key.render(args, kwargs, self._signature)

    def claim_op(
        self, keys: KeySchema, bucket: str | None, task_id: str, tag: str | None = None
    ) -> LeaseOp:
        """The publish-time claim of ``bucket`` by message ``task_id``."""
        return LeaseOp(
            keys.unique(self.name or "", bucket, tag=tag),
            owner=task_id,
            ttl=self.queue_ttl,
            purpose="claim",
        )

    def task_ops(
        self, keys: KeySchema, args: Sequence[Any], kwargs: Mapping[str, Any], task_id: str
    ) -> list[Op]:
        bucket = self.bucket(args, kwargs)
        tag = self.tag_for(args, kwargs)
        name = self.name or ""
        ops: list[Op] = []
        if self.at_publish:
            # Run-time half of uniqueness: a duplicate that slipped past publish (send_task,
            # or a claim that expired) finds the claim held by another message id.
            until_executed = self.mode == "until_executed"
            ops.append(
                LeaseOp(
                    keys.unique(name, bucket, tag=tag),
                    owner=task_id,
                    ttl=self.ttl if until_executed else self.queue_ttl,
                    drop=not until_executed,
                    purpose="claim",
                )
            )
        if self.runtime:
            lock = keys.lock(name, bucket, tag=tag)
            parking = self.on_conflict == "defer"
            ops.append(
                LeaseOp(
                    lock,
                    owner=f"{task_id}:{new_owner()}",
                    ttl=self.ttl,
                    fence_key=keys.fence(name, bucket, tag=tag),
                    wakeup_key=keys.wakeup(name, bucket, tag=tag),
                    park_key=keys.park_lot(lock) if parking else None,
                    park_due=keys.park_due(lock) if parking else None,
                )
            )
        return ops

    def conflict_delay(self, retry_after: float) -> float:
        # The holder renews its lease, so its TTL says little about when it ends; come
        # back within a fraction of it rather than at expiry.
        return min(retry_after, max(self.ttl / 4, 0.5))

    def on_denied(self, op: Op, retry_after: float, run: RunContext) -> Verdict:
        if isinstance(op, LeaseOp) and op.purpose == "claim":
            holder = run.backend.owner(op.key)
            signals.duplicate_rejected.send(
                sender=run.sender, task_id=run.task_id, holder=holder, key=op.key, stage="run"
            )
            return Verdict("duplicate", f"duplicate of {holder} ({op.key})")
        signals.lock_conflict.send(
            sender=run.sender,
            task_id=run.task_id,
            key=op.key,
            retry_after=retry_after,
            action=self.on_conflict,
        )
        if self.on_conflict == "skip":
            return Verdict("skip", f"skipped: {op.key} is held")
        if self.on_conflict == "fail":
            return Verdict("fail")
        return DEFER

    def denied_error(self, retry_after: float, key: str | None = None) -> LockHeld:
        return LockHeld(
            f"{self!r} is held for key {key!r}; it expires in {retry_after:.1f}s unless renewed",
            guard=repr(self),
            key=key,
            retry_after=retry_after,
        )


#: An acquired lock (the generic held lease, with its fencing token).
HeldLock = HeldLease


class DistributedLock(LeasedPrimitive):
    """A named lock outside of Celery. Build with ``taskguard.connect(url).lock(name)``.

    Example:
        >>> import taskguard
        >>> lock = taskguard.connect("memory://").lock("report:42", ttl=30)
        >>> with lock.acquire(timeout=5) as held:
        ...     held.fencing_token > 0
        True
    """

    def __init__(
        self, backend: Backend, name: str, *, ttl: float = 30.0, renew: bool = True
    ) -> None:
        self.backend = backend
        self.name = check_name(name, "name")
        self.ttl = seconds(ttl, "ttl")
        self.renew = renew
        super().__init__()
        keys = backend.keys
        self._keys = (keys.lock(name), keys.fence(name), keys.wakeup(name))

    def __repr__(self) -> str:
        return f"<DistributedLock {self.name!r} ttl={self.ttl} on {self.backend!r}>"

    def _lease(self) -> LeaseOp:
        return LeaseOp(
            self._keys[0],
            owner=new_owner(),
            ttl=self.ttl,
            fence_key=self._keys[1],
            wakeup_key=self._keys[2],
        )

    def _ops(self) -> list[Op]:
        return [self._lease()]

    def _decision(self, op: Op, admission: Admission) -> Decision:
        if not admission.allowed:
            return Decision(False, retry_after=admission.retry_after, key=self.name)
        held = HeldLease(self.backend, cast(LeaseOp, op), admission.tokens[0], renew=self.renew)
        return Decision(True, key=self.name, token=held.fencing_token, lease=held)

    @property
    def _wakeup_key(self) -> str:
        return self._keys[2]

    def _refused(self, retry_after: float) -> LockHeld:
        return LockHeld(f"lock {self.name!r} is held", key=self.name, retry_after=retry_after)

    def locked(self) -> bool:
        """True while someone holds the lock."""
        return self.backend.owner(self._keys[0]) is not None
