"""Publish-time uniqueness: one queued message per key.

``Lock(mode="until_executing" | "until_executed" | ...)`` claims the key when the task is
published, with the message's task id as owner and a TTL covering its time in the queue.
A second publish for the same key finds the claim and either gets the queued task's
AsyncResult or AlreadyQueued. The run-time half (in :mod:`taskguard.runs`) releases the
claim when the task starts or ends, and catches duplicates that never went through
``apply_async`` (``send_task``), using the same key function.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from celery.utils import uuid

from taskguard import signals
from taskguard.errors import AlreadyQueued, BackendError, BackendUnavailable
from taskguard.guards.lock import Lock

from ._settings import TaskSettings

__all__ = ["publish_unique"]

logger = logging.getLogger("taskguard.uniqueness")


def publish_unique(
    task: Any,
    config: TaskSettings,
    *,
    args: Any,
    kwargs: Any,
    options: Mapping[str, Any],
    publish: Callable[..., Any],
) -> Any:
    """Claim the task's uniqueness keys, then ``publish``; or answer with the holder.

    Returns:
        The AsyncResult of the published task, or of the already queued one.

    Raises:
        AlreadyQueued: A duplicate, with ``on_duplicate="raise"``.
        BackendUnavailable: Redis is down and a lock's ``on_outage`` is ``"deny"``.
        BackendError: Redis refused the check (a permission or script error): nothing
            is published, whatever ``on_outage`` says.
    """
    backend = task.taskguard_backend
    task_id = options.get("task_id") or uuid()
    options = {**options, "task_id": task_id}
    locks = [g for g in config.guards if isinstance(g, Lock) and g.at_publish]
    call_args, call_kwargs = tuple(args or ()), dict(kwargs or {})
    claims = [
        lock.claim_op(
            backend.keys,
            lock.bucket(call_args, call_kwargs),
            task_id,
            lock.tag_for(call_args, call_kwargs),
        )
        for lock in locks
    ]
    try:
        result = backend.admit(claims)
    except BackendError as exc:  # not an outage: nothing is published unchecked
        raise exc.naming(tuple(repr(lock) for lock in locks)) from exc.__cause__
    except BackendUnavailable as exc:
        if any(lock.on_outage == "deny" for lock in locks):
            raise
        logger.warning("%s published without its uniqueness check: %s", task.name, exc)
        return publish(args, kwargs, **options)
    if not result.allowed:
        lock, claim = locks[result.denied or 0], claims[result.denied or 0]
        holder = backend.owner(claim.key)
        signals.duplicate_rejected.send(
            sender=task, task_id=task_id, holder=holder, key=claim.key, stage="publish"
        )
        if lock.on_duplicate == "raise" or holder is None:
            raise AlreadyQueued(
                f"{task.name}: {claim.key} is already queued as {holder}",
                task_id=holder,
                key=claim.key,
            )
        logger.debug("%s: duplicate of %s not published", task.name, holder)
        return task.AsyncResult(holder)
    try:
        return publish(args, kwargs, **options)
    except BaseException:
        # The message never left: do not keep its key claimed for queue_ttl.
        backend.release(claims)
        raise
