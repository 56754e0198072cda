"""Celery remote control: ``celery inspect taskguard_status``, ``celery control taskguard_*``.

The commands register in Celery's command registry (``celery.worker.control.Panel``,
through its ``inspect_command`` / ``control_command`` decorators) when
:mod:`taskguard.celery` is imported, so every worker of a taskguard app answers them:

- ``taskguard_status`` (inspect): this worker's view: its guarded tasks with their guards
  and settings, the rates set at run time for their limiters, its running guarded tasks,
  the leases its heartbeat renews, its hot-path breaker views, its Redis and outage state,
  and the tasks parked under its prefix;
- ``taskguard_breaker <open|close|reset> <name>``, ``taskguard_limit_set <name> <value>
  [burst] [key] [kind]``, ``taskguard_limit_clear <name> [key] [kind]`` (control): the
  actions of ``taskguard breaker`` and ``taskguard limit`` (``kind``: ``rate``, the
  default, ``cap`` or ``quota``), through the same code
  (:func:`taskguard.status.force_breaker`, :func:`taskguard._limits.set_of_kind`), with
  the same validation and the same guard events;
- ``taskguard_refresh`` (control): refresh the hot-path breaker views from Redis now.

They run in the worker's main process, the one that consumes. With the ``solo`` and
``threads`` pools tasks run there too; with ``prefork`` the pool processes keep their own
heartbeat and hot-path views, which the main process cannot see (``running`` lists their
tasks, whose ids are their leases' owners). Guard state itself is fleet-wide: send an
action to one worker (``-d``/``destination``), not to all.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import Any

from celery.app.control import flatten_reply
from celery.worker import state as worker_state
from celery.worker.control import control_command, inspect_command

from taskguard._limits import KINDS, VALUES, clear_of_kind, scope, set_of_kind
from taskguard.backend.base import Backend
from taskguard.backend.limits import limits_of
from taskguard.backend.redis import RedisBackend
from taskguard.client import Client
from taskguard.errors import BackendError, BackendUnavailable, TaskGuardError
from taskguard.events import publish_event
from taskguard.guards.breaker_hotpath import local_hot_path_breakers, publish_refresh
from taskguard.guards.breaker_spec import CircuitBreaker
from taskguard.guards.ratelimit import RateLimit
from taskguard.heartbeat import heartbeat_for
from taskguard.status import force_breaker
from taskguard.urls import redact

from ._runtime import Runtime, runtime_for

__all__ = ["STATUS_COMMAND", "inspect_workers", "worker_view"]

#: The inspect command's name (``celery inspect taskguard_status``).
STATUS_COMMAND = "taskguard_status"
#: Pools whose tasks run in the worker's main process, where the commands run.
IN_PROCESS_POOLS = ("solo", "thread", "threads", "eventlet", "gevent")


def inspect_workers(
    app: Any, *, destination: list[str] | None = None, timeout: float = 1.0
) -> dict[str, dict[str, Any]]:
    """Ask workers for their ``taskguard_status``; returns node name -> view.

    Celery's ``Inspect`` has no method for commands added by libraries, so this sends the
    command as ``celery inspect taskguard_status`` does.

    Args:
        app: The Celery app (its broker reaches the workers).
        destination: Node names to ask (default: every worker).
        timeout: Seconds to wait for replies.
    """
    replies = app.control.broadcast(
        STATUS_COMMAND, reply=True, destination=destination, timeout=timeout
    )
    return dict(flatten_reply(replies))


def _guarded(runtime: Runtime) -> list[Any]:
    return sorted(runtime.guarded_tasks(), key=lambda task: str(task.name))


def _section(read: Callable[[], Any]) -> Any:
    """What ``read`` returns, or ``{"error": ...}`` when Redis could not answer."""
    try:
        return read()
    except (BackendUnavailable, BackendError) as exc:
        return {"error": str(exc)}


def _plain(value: Any) -> Any:
    """``value`` with what JSON cannot carry (tuples of objects, inf) made plain."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _backend_view(runtime: Runtime, backend: Backend) -> dict[str, Any]:
    view: dict[str, Any] = {"url": redact(runtime.redis_url()), "reachable": True, "error": None}
    try:
        backend.ping()
    except (BackendUnavailable, BackendError) as exc:
        view.update(reachable=False, error=str(exc))
    if isinstance(backend, RedisBackend):
        view["outage_breaker"] = backend.breaker.state
        view["fail_fast_for"] = (
            round(backend.breaker.wait_time(), 3) if not view["reachable"] else 0
        )
    return view


def _task_view(task: Any) -> dict[str, Any]:
    config = task.taskguard_settings
    return {
        "enabled": config.enabled,
        "guards": [repr(guard) for guard in config.guards],
        "shadow_guards": [repr(guard) for guard in config.shadow],
        "deferral": _plain(dataclasses.asdict(config.deferral)),
    }


def _limits_view(backend: Backend, tasks: list[Any]) -> dict[str, Any]:
    """Each rate limiter of the tasks: its configured rate and the rates set at run time."""
    configured: dict[str, list[str]] = {}
    for task in tasks:
        config = task.taskguard_settings
        for guard in (*config.guards, *config.shadow):
            if isinstance(guard, RateLimit) and guard.name:
                rate = f"{guard.rate} (burst {guard.burst})"
                configured.setdefault(guard.name, [])
                if rate not in configured[guard.name]:
                    configured[guard.name].append(rate)
    view: dict[str, Any] = {}
    for name, rates in sorted(configured.items()):
        found = limits_of(backend, name)
        view[name] = {
            "configured": rates,
            "set_at_run_time": [
                {"key": o.key, "per_second": o.per_second, "burst": o.burst} for o in found
            ],
        }
    return view


def _running(tasks: list[Any]) -> list[dict[str, Any]]:
    names = {task.name for task in tasks}
    running = []
    for request in list(worker_state.active_requests):
        if request.name in names:
            started = request.time_start
            running.append(
                {
                    "id": request.id,
                    "name": request.name,
                    "pid": request.worker_pid,
                    "started": started,
                }
            )
    return sorted(running, key=lambda r: (r["started"] or 0, r["id"]))


def _leases(backend: Backend) -> list[dict[str, Any]]:
    leases = heartbeat_for(backend).leases()
    return [
        {"key": lease.key, "owner": getattr(lease, "owner", None), "ttl": lease.ttl}
        for lease in sorted(leases, key=lambda lease: lease.key)
    ]


def _hot_path() -> list[dict[str, Any]]:
    return [
        {
            "name": breaker.spec.name,
            "prefix": breaker.backend.keys.prefix,
            "state": breaker.local_state,
            "view_age": _plain(round(breaker.view_age, 3)),
            "flush_interval": breaker.flush_interval,
        }
        for breaker in local_hot_path_breakers()
    ]


def worker_view(
    app: Any, *, hostname: str | None = None, pool: str | None = None
) -> dict[str, Any]:
    """What ``celery inspect taskguard_status`` answers for this process (see the module
    doc). Never raises for Redis: a section Redis did not answer says ``{"error": ...}``.

    Args:
        app: The worker's Celery app.
        hostname: The worker's node name.
        pool: The worker's pool kind (``prefork``, ``solo``, ``threads``...).
    """
    started = time.perf_counter()
    runtime = runtime_for(app)
    backend = runtime.backend
    tasks = _guarded(runtime)
    view: dict[str, Any] = {
        "hostname": hostname,
        "pid": os.getpid(),
        "pool": pool,
        "tasks_run_here": pool in IN_PROCESS_POOLS if pool is not None else None,
        "enabled": runtime.settings.enabled,
        "prefix": backend.keys.prefix,
        "backend": _backend_view(runtime, backend),
        "tasks": {task.name: _task_view(task) for task in tasks},
        "limits": _section(lambda: _limits_view(backend, tasks)),
        "running": _running(tasks),
        "leases": _leases(backend),
        "hot_path_breakers": _hot_path(),
        "parked": _section(lambda: Client(backend).parked()),
    }
    view["elapsed"] = round(time.perf_counter() - started, 6)
    return view


def _pool_kind(state: Any) -> str | None:
    pool = getattr(getattr(state, "consumer", None), "pool", None)
    if pool is None:
        return None
    return str(type(pool).__module__).rsplit(".", 1)[-1]


def _ok(message: str, **details: Any) -> dict[str, Any]:
    return {"ok": message, **details}


def _nok(message: str) -> dict[str, Any]:
    return {"error": message}


@inspect_command()  # type: ignore[untyped-decorator]
def taskguard_status(state: Any, **kwargs: Any) -> dict[str, Any]:
    """taskguard in this worker: guarded tasks, limits, leases, breaker views, Redis."""
    return worker_view(state.app, hostname=state.hostname, pool=_pool_kind(state))


@control_command(  # type: ignore[untyped-decorator]
    args=[("action", str), ("name", str)], signature="<open|close|reset> <breaker name>"
)
def taskguard_breaker(state: Any, action: str = "", name: str = "", **kwargs: Any) -> Any:
    """Force a circuit breaker open, close it or reset it, fleet-wide."""
    backend = runtime_for(state.app).backend
    try:
        change = force_breaker(backend, name, action)
    except (TaskGuardError, ValueError) as exc:
        return _nok(str(exc))
    publish_event(
        backend,
        "admin",
        action=f"breaker_{action}",
        name=name,
        before=change.before,
        after=change.after,
    )
    message = f"breaker {name!r}: {change.before} -> {change.after}"
    if change.existed is False:
        message += f" (no breaker {name!r} had state under prefix {backend.keys.prefix!r})"
    return _ok(message, before=change.before, after=change.after, existed=change.existed)


@control_command(  # type: ignore[untyped-decorator]
    args=[("name", str), ("value", str), ("burst", int), ("key", str), ("kind", str)],
    signature="<name> <rate|slots|allowance> [burst=1] [key, '' for every key] [rate|cap|quota]",
)
def taskguard_limit_set(
    state: Any,
    *,
    name: str = "",
    value: str = "",
    burst: int = 1,
    key: str | None = None,
    kind: str = "rate",
    rate: str | None = None,
    **kw: Any,
) -> Any:
    """Set a rate limit's rate, a concurrency cap's slot count or a quota's allowance at
    run time, fleet-wide (as `taskguard limit set --kind`). ``rate`` is ``value``'s name
    from before caps and quotas."""
    key = key or None  # `celery control` passes every argument by position: '' is no key
    try:
        shown = set_of_kind(
            Client(runtime_for(state.app).backend),
            kind,
            name,
            value or rate or "",
            key=key,
            burst=burst,
        )
    except (TaskGuardError, ValueError) as exc:
        return _nok(str(exc))
    return _ok(f"{KINDS[kind]} {name!r}, {scope(kind, key)}: {shown} from now on")


@control_command(  # type: ignore[untyped-decorator]
    args=[("name", str), ("key", str), ("kind", str)],
    signature="<name> [key, '' for every key] [rate|cap|quota]",
)
def taskguard_limit_clear(
    state: Any, name: str = "", key: str | None = None, kind: str = "rate", **kw: Any
) -> Any:
    """Remove a rate, slot count or allowance set at run time: the configured one applies
    again, fleet-wide."""
    key = key or None
    try:
        removed = clear_of_kind(Client(runtime_for(state.app).backend), kind, name, key=key)
    except (TaskGuardError, ValueError) as exc:
        return _nok(str(exc))
    if not removed:
        return _nok(f"no {VALUES[kind]} was set for {name!r}, {scope(kind, key)}")
    return _ok(f"{KINDS[kind]} {name!r}, {scope(kind, key)}: back to its configured {VALUES[kind]}")


@control_command()  # type: ignore[untyped-decorator]
def taskguard_refresh(state: Any, **kwargs: Any) -> Any:
    """Refresh hot-path breaker views from Redis: this process's now, every process's
    (pool processes too) through the breaker channel."""
    runtime = runtime_for(state.app)
    views: list[dict[str, Any]] = []
    names: set[tuple[RedisBackend, str]] = set()
    for breaker in local_hot_path_breakers():
        names.add((breaker.redis_backend, breaker.spec.name))
        view = {"name": breaker.spec.name, "prefix": breaker.backend.keys.prefix}
        try:
            breaker.flush()
            view["state"] = breaker.local_state
        except (BackendUnavailable, BackendError) as exc:
            view["error"] = str(exc)
        views.append(view)
    backend = runtime.backend
    if isinstance(backend, RedisBackend):
        for task in _guarded(runtime):
            for guard in task.taskguard_settings.guards:
                if isinstance(guard, CircuitBreaker):
                    names.add((backend, guard.name))
    told: set[str] = set()
    unreachable: dict[str, str] = {}
    for where, name in sorted(names, key=lambda pair: (pair[0].keys.prefix, pair[1])):
        try:  # one Redis down, or refusing: tell the rest
            published = publish_refresh(where, name)
        except BackendError as exc:
            unreachable[f"{where.keys.prefix}/{name}"] = str(exc)
            continue
        if published:
            told.add(name)
        else:
            unreachable[f"{where.keys.prefix}/{name}"] = "Redis unreachable"
    refreshed = sum(1 for view in views if "state" in view)
    message = (
        f"refreshed {refreshed} of {len(views)} view(s) here; "
        f"told every process about {sorted(told)}"
    )
    if unreachable:
        message += f"; could not tell {sorted(unreachable)}"
    return _ok(message, views=views, told=sorted(told), unreachable=unreachable)
