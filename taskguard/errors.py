"""Every exception taskguard raises.

Callers catch one thing, :class:`TaskGuardError`, or a branch of the tree::

    TaskGuardError
    ├── ConfigurationError          a setting or guard spec is invalid (raised at worker start)
    ├── BackendUnavailable          Redis is out of service for now (connection lost, timeout,
    │                               LOADING, READONLY or failover; also OOM): the outage
    │                               policies decide
    ├── BackendError                Redis refused the request for a reason that will not pass
    │                               by itself (NOPERM, WRONGPASS, a script error...): fails
    │                               loudly and names the guards involved
    ├── GuardDenied                 a guard said "not now"; carries ``retry_after``
    │   ├── RateLimited
    │   ├── LockHeld
    │   ├── ConcurrencyLimitReached
    │   └── CircuitOpen
    ├── LockLost                    a lease expired or was taken over before its release
    ├── AlreadyQueued               publish-time uniqueness found the same work queued
    ├── DeferralExhausted           a task was deferred too often or for too long
    ├── WriteBehindFull             the write-behind queue is at capacity (policy "raise")
    ├── StoreError                  the database (store) failed; ``transient`` says if a
    │                               retry may succeed
    └── UnstorableValue             a cache key or value the codec or the store cannot keep
                                    as given (also a ValueError and a TypeError)

Driver errors are wrapped with ``raise ... from exc`` so the original is kept as ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "AlreadyQueued",
    "BackendError",
    "BackendUnavailable",
    "CircuitOpen",
    "ConcurrencyLimitReached",
    "ConfigurationError",
    "DeferralExhausted",
    "GuardDenied",
    "LockHeld",
    "LockLost",
    "RateLimited",
    "StoreError",
    "TaskGuardError",
    "UnstorableValue",
    "WriteBehindFull",
]


class TaskGuardError(Exception):
    """Root of every exception raised by taskguard."""


class ConfigurationError(TaskGuardError, ValueError):
    """A setting or a guard specification is invalid.

    Attributes:
        task: The task name the setting belongs to, or ``None`` for a global setting.
        field: The offending setting, e.g. ``"rate_limit"``.
    """

    def __init__(self, message: str, *, task: str | None = None, field: str | None = None):
        self.task = task
        self.field = field
        self.reason = message
        where = []
        if task:
            where.append(f"task {task!r}")
        if field:
            where.append(f"field {field!r}")
        prefix = f"[{', '.join(where)}] " if where else ""
        super().__init__(f"{prefix}{message}")

    def for_task(self, task: str, field: str | None = None) -> ConfigurationError:
        """The same error, naming ``task`` (and ``field`` if it had none)."""
        return ConfigurationError(self.reason, task=task, field=self.field or field)


class BackendUnavailable(TaskGuardError):
    """The guard backend (Redis) is out of service for now; the outage policies decide.

    Raised for a lost connection, a timeout, and the server states that pass by themselves:
    ``LOADING``, ``READONLY`` (a replica after a failover), ``MASTERDOWN``, ``TRYAGAIN``,
    ``CLUSTERDOWN``, ``BUSY``, ``NOREPLICAS``; and for ``OOM`` and ``MISCONF``, where the
    server answers but refuses to write (``code`` tells them apart). Also raised at once,
    without touching the network, while the backend's internal outage breaker is open.

    Attributes:
        retry_after: Seconds until the backend will be tried again, when known.
        code: The Redis error code (``"READONLY"``, ``"OOM"``...), or ``None`` for a lost
            connection or a timeout.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, code: str | None = None):
        self.retry_after = retry_after
        self.code = code
        super().__init__(message)

    @property
    def refuses_writes(self) -> bool:
        """True when Redis answers but refuses writes (``OOM``, ``MISCONF``)."""
        return self.code in ("OOM", "MISCONF")


class BackendError(TaskGuardError):
    """Redis refused a request for a reason that does not pass by itself.

    A missing ACL permission (``NOPERM``), a wrong password (``WRONGPASS``, ``NOAUTH``),
    an error raised inside a Lua script, a command the server does not know, a key of
    the wrong type (``WRONGTYPE``). Never handled by an outage policy: a guard whose
    state cannot be read or written this way must not let work through unguarded.

    Attributes:
        code: The Redis error code (``"NOPERM"``, ``"WRONGPASS"``, ``"ERR"``...), or
            ``None`` when redis-py itself refused (a protocol or data error).
        what: The operation that failed (``"admission"``, ``"cache SET"``...).
        guards: Descriptions of the guards involved, when known (a task's admission
            names every guard it checked in the failing round trip).
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        what: str | None = None,
        guards: tuple[str, ...] = (),
    ):
        self.code = code
        self.what = what
        self.guards = tuple(guards)
        self.reason = message
        named = f" [guards: {', '.join(self.guards)}]" if self.guards else ""
        super().__init__(f"{message}{named}")

    def naming(self, guards: tuple[str, ...]) -> BackendError:
        """The same error, naming ``guards``."""
        return BackendError(self.reason, code=self.code, what=self.what, guards=guards)


class GuardDenied(TaskGuardError):
    """A guard refused admission.

    Attributes:
        guard: A short description of the guard that refused, e.g. ``"RateLimit('10/s')"``.
        key: The resolved guard key (the rate-limit bucket, lock name...), if any.
        retry_after: Seconds after which trying again can succeed.
    """

    def __init__(
        self,
        message: str,
        *,
        guard: str | None = None,
        key: str | None = None,
        retry_after: float = 0.0,
    ):
        self.guard = guard
        self.key = key
        self.retry_after = retry_after
        super().__init__(message)


class RateLimited(GuardDenied):
    """A rate limit has no capacity left right now."""


class LockHeld(GuardDenied):
    """The lock is held by another owner."""


class ConcurrencyLimitReached(GuardDenied):
    """Every concurrency slot for the key is taken."""


class CircuitOpen(GuardDenied):
    """The circuit breaker is open."""


class LockLost(TaskGuardError):
    """A lease (lock) was no longer ours when we released or extended it.

    It expired (the holder outlived its TTL without a heartbeat) or another owner took it
    after expiry. The other owner's lock is never touched.

    Attributes:
        key: The lock's key.
    """

    def __init__(self, message: str, *, key: str | None = None):
        self.key = key
        super().__init__(message)


class AlreadyQueued(TaskGuardError):
    """Publish-time uniqueness: the same work is already queued or running.

    Attributes:
        task_id: The id of the task holding the claim (its result is that work's result).
        key: The uniqueness key.
    """

    def __init__(self, message: str, *, task_id: str | None = None, key: str | None = None):
        self.task_id = task_id
        self.key = key
        super().__init__(message)


class DeferralExhausted(TaskGuardError):
    """A task was deferred more often, or for longer, than its deferral cap allows.

    Attributes:
        task_id: The id of the task.
        deferrals: How many times it had been deferred.
        age: Seconds since it was first deferred.
    """

    def __init__(
        self, message: str, *, task_id: str | None = None, deferrals: int = 0, age: float = 0.0
    ):
        self.task_id = task_id
        self.deferrals = deferrals
        self.age = age
        super().__init__(message)


class WriteBehindFull(TaskGuardError):
    """A write-behind write found its queue at capacity and the policy is ``"raise"``.

    Nothing was written: neither the cache nor the queue changed.

    Attributes:
        namespace: The cache namespace.
        backlog: Records queued in the key's partition when the write was refused.
    """

    def __init__(self, message: str, *, namespace: str, backlog: int):
        self.namespace = namespace
        self.backlog = backlog
        super().__init__(message)


class StoreError(TaskGuardError):
    """A store (database) operation failed.

    Attributes:
        transient: True for errors a retry may cure (connection lost, server restarting,
            serialization failure); False for errors in the data (a constraint violated),
            which the drain pool dead-letters instead of retrying.
    """

    def __init__(self, message: str, *, transient: bool):
        self.transient = transient
        super().__init__(message)


class UnstorableValue(TaskGuardError, ValueError, TypeError):
    """A cache write refused before anything was written: its value would not read back
    equal through the namespace's codec (a tuple, a dict with int keys, NaN), or the store
    cannot hold the key or value (see ``Store.check``: e.g. Infinity, NUL characters or
    over-long keys in PostgreSQL).

    Also a ``ValueError`` and a ``TypeError`` (which the codec raised for values it cannot
    encode at all).

    Attributes:
        namespace: The cache namespace.
        key: The cache key.
        field: Where the problem is: ``"key"``, ``"value"``, or a path into the value such
            as ``"value['items'][2]"``.
        reason: What is wrong, without the namespace and key.
    """

    def __init__(self, reason: str, *, namespace: str, key: str, field: str = "value"):
        self.namespace = namespace
        self.key = key
        self.field = field
        self.reason = reason
        shown = repr(key) if len(key) <= 80 else f"{key[:60]!r}... ({len(key)} characters)"
        super().__init__(f"cache {namespace!r}, key {shown}: {field}: {reason}")
