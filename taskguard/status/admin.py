"""Operator actions on guard state: free a stuck lock, force a breaker's state.

Both go through the guards' own paths (an owner-checked lease release, the breaker's
admin controls), so waiters are woken, parked tasks are handed back and hot-path views
refresh, as for any release or admin call.
"""

from __future__ import annotations

from dataclasses import dataclass

from taskguard.backend.base import Backend
from taskguard.backend.ops import LeaseOp
from taskguard.backend.redis import HasBackend, RedisBackend
from taskguard.guards.breaker import Breaker
from taskguard.guards.breaker_hotpath import publish_refresh
from taskguard.guards.breaker_spec import CircuitBreaker

from .derive import text

__all__ = ["BREAKER_ACTIONS", "BreakerChange", "ReleasedLock", "force_breaker", "release_lock"]

#: ``taskguard breaker <action>`` -> the :class:`~taskguard.guards.breaker.Breaker` method.
BREAKER_ACTIONS = {"open": "force_open", "close": "force_close", "reset": "reset"}


def _backend(source: Backend | HasBackend) -> Backend:
    return source if isinstance(source, Backend) else source.backend


@dataclass(frozen=True)
class ReleasedLock:
    """What :func:`release_lock` did.

    Attributes:
        name: The lock's name.
        key: The lock's key.
        owner: Who held it (``None``: nobody did; nothing was done).
        released: True when the holder's lease was deleted. False with an owner: the
            lock changed hands (or expired) between the read and the release.
        fencing_token: The holder's fencing token, when known (Redis only).
        parked: Tasks are parked on the lock: the next sweep of any worker hands the
            first one back.
    """

    name: str
    key: str | None
    owner: str | None
    released: bool
    fencing_token: int | None = None
    parked: bool = False


def release_lock(
    source: Backend | HasBackend, name: str, key: str | None = None, *, tag: str | None = None
) -> ReleasedLock:
    """Release lock ``name`` / ``key`` whoever holds it.

    The holder keeps running: its next renewal finds the lease gone (``lease_lost``),
    and the next holder's fencing token is larger than its, so a store that checks
    tokens refuses its late writes. Only the holder read is released: if the lock
    changes hands meanwhile, the new holder keeps it.

    Args:
        source: The backend, or a client built on it.
        name: The lock's name (for a ``Lock`` guard, its ``name``, by default the task's).
        key: The lock's key (``None``: a key-less lock, as ``client.lock(name)`` takes).
        tag: The rendered ``tag=`` of a ``Lock`` guard that has one: on Redis Cluster it
            places the lock's keys (elsewhere it changes nothing).
    """
    backend = _backend(source)
    keys = backend.keys
    lock_key = keys.lock(name, key, tag=tag)
    owner = backend.owner(lock_key)
    if owner is None:
        return ReleasedLock(name, key, None, released=False)
    token = None
    if isinstance(backend, RedisBackend):
        with backend.commands("lock fence") as client:
            fence = client.get(keys.fence(name, key, tag=tag))
        token = int(text(fence)) if fence is not None else None
    op = LeaseOp(
        lock_key,
        owner=owner,
        ttl=1.0,
        wakeup_key=keys.wakeup(name, key, tag=tag),
        park_key=keys.park_lot(lock_key),
        park_due=keys.park_due(lock_key),
    )
    [result] = backend.release([op])
    return ReleasedLock(
        name, key, owner, released=result > 0, fencing_token=token, parked=result == 2
    )


@dataclass(frozen=True)
class BreakerChange:
    """What :func:`force_breaker` did.

    Attributes:
        name: The breaker's name.
        action: ``open``, ``close`` or ``reset``.
        before: The state before (``closed`` for a breaker with no state).
        after: The state after.
        existed: Whether the breaker had state before (``None``: not known, off Redis).
            A breaker forced open that did not exist is created: check the name.
    """

    name: str
    action: str
    before: str
    after: str
    existed: bool | None


def force_breaker(source: Backend | HasBackend, name: str, action: str) -> BreakerChange:
    """Force breaker ``name`` open, close it (empty window) or reset it (forget it).

    ``open`` holds until ``close`` or ``reset``: probes do not close a forced breaker.
    Hot-path breakers in every process are told to refresh their view at once.

    Args:
        source: The backend, or a client built on it.
        name: The breaker's name.
        action: ``open``, ``close`` or ``reset``.

    Raises:
        ValueError: An unknown action.
    """
    if action not in BREAKER_ACTIONS:
        raise ValueError(f"action must be one of {sorted(BREAKER_ACTIONS)}, got {action!r}")
    backend = _backend(source)
    breaker = Breaker(backend, CircuitBreaker(name))
    existed = None
    if isinstance(backend, RedisBackend):
        with backend.commands("breaker exists") as client:
            existed = bool(client.exists(backend.keys.breaker(name)))
    before = breaker.state
    getattr(breaker, BREAKER_ACTIONS[action])()
    if isinstance(backend, RedisBackend):
        publish_refresh(backend, name)
    return BreakerChange(name, action, before, breaker.state, existed)
