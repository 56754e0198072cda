"""Which Celery worker pools taskguard runs on, checked when a worker starts.

prefork, threads and solo keep every guarantee: leases are renewed by a heartbeat
thread (an OS thread) in each process that runs tasks, whatever a task does meanwhile.

gevent and eventlet are refused when the app has guarded tasks. Their monkey-patching
turns that heartbeat, the parking sweeper and the breaker listener into green threads,
which run only when a task yields: a task that computes, or calls a C library, for
longer than a lease's ``ttl`` would lose its lock or slot to another worker while it
still runs. A worker that cannot keep a lease must not take one, so it stops at start
with :class:`~taskguard.errors.ConfigurationError` rather than break exclusivity later.
"""

from __future__ import annotations

from typing import Any

from taskguard.errors import ConfigurationError

__all__ = ["GREEN_POOLS", "check_pool", "pool_name"]

#: Pools whose workers run tasks on green threads (monkey-patched), by Celery's name.
GREEN_POOLS = frozenset({"gevent", "eventlet"})


def pool_name(pool_cls: Any) -> str:
    """Celery's short name of a worker's pool: ``prefork``, ``threads``, ``gevent``...

    Example:
        >>> from celery.concurrency.solo import TaskPool
        >>> pool_name(TaskPool)
        'solo'
        >>> pool_name("threads")
        'threads'
    """
    if isinstance(pool_cls, str):  # an alias, or "module:Class"
        module = pool_cls.partition(":")[0] if ":" in pool_cls else f"x.{pool_cls}"
    else:
        module = getattr(pool_cls, "__module__", "") or ""
    name = module.rpartition(".")[2]
    return {"asynpool": "prefork", "thread": "threads"}.get(name, name)


def check_pool(pool_cls: Any, guarded_tasks: list[str]) -> None:
    """Refuse a green pool when ``guarded_tasks`` is not empty.

    Raises:
        ConfigurationError: The pool is gevent or eventlet and tasks are guarded; the
            message names the pool, the first tasks, and the pools that work.

    Example:
        >>> check_pool("threads", ["app.tasks.charge"])
        >>> check_pool("gevent", [])
        >>> check_pool("gevent", ["app.tasks.charge"])
        Traceback (most recent call last):
        ...
        taskguard.errors.ConfigurationError: [field 'pool'] the gevent pool runs ...
    """
    name = pool_name(pool_cls)
    if name not in GREEN_POOLS or not guarded_tasks:
        return
    shown = ", ".join(sorted(guarded_tasks)[:3]) + (", ..." if len(guarded_tasks) > 3 else "")
    raise ConfigurationError(
        f"the {name} pool runs tasks on green threads, where taskguard's lease heartbeat "
        f"only runs when a task yields, so a lock or slot could pass to another worker "
        f"while its holder still runs ({len(guarded_tasks)} guarded task(s): {shown}). "
        "Run guarded tasks on the prefork, threads or solo pool (docs/settings.md, "
        '"Worker pools")',
        field="pool",
    )
