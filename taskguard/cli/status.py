"""``taskguard status``: what the guards hold in Redis, on one screen or as JSON.

The reading is :func:`taskguard.status.read_status` (SCAN, never KEYS; pipelined reads;
nothing written); this module only picks the backends, repeats under ``--watch`` and
prints. The tables need ``rich`` (the ``cli`` extra); ``--json`` does not.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import click

from ._connect import configured_guards, connect_redis, prefix_option, redis_url_option

__all__ = ["status"]

#: Seconds between refreshes for a bare ``--watch``.
WATCH_EVERY = 2.0

_sleep = time.sleep  # the pause between refreshes (replaced in tests)


@click.command(
    short_help="Show the guards' state in Redis: buckets, locks, slots, breakers, queues."
)
@redis_url_option
@prefix_option(multiple=True)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON instead of tables: one document (with --watch, one per line).",
)
@click.option(
    "--watch",
    type=click.FloatRange(min=0.1),
    is_flag=False,
    flag_value=WATCH_EVERY,
    default=None,
    metavar="[SECONDS]",
    help=f"Refresh every SECONDS (default {WATCH_EVERY:g}) until interrupted.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Rows per table (0: all). The JSON output always has every row.",
)
@click.pass_context
def status(
    ctx: click.Context,
    *,
    redis_url: str | None,
    prefixes: tuple[str, ...],
    as_json: bool,
    watch: float | None,
    limit: int,
) -> None:
    """Show what taskguard holds in Redis under a key prefix, read with SCAN (never KEYS)
    and pipelined reads, writing nothing:

    rate-limit buckets with their level, locks held (owner, age, fencing token, lease
    left), concurrency slots and their holders, circuit breakers with their state and
    window counts, calendar quotas, tasks parked on a slot or a lock, write-behind
    backlogs, lag and dead letters, drain pools and the partitions they lease.

    Run as `celery -A proj taskguard status` to use the app's Redis and prefix and to see
    its guarded tasks, with the level of each rate-limit bucket in tokens (Redis stores a
    bucket's state, not its rate: otherwise a bucket shows its backlog in seconds).
    """
    from taskguard.guards.ratelimit import RateLimit
    from taskguard.status import read_status
    from taskguard.urls import redact

    tasks = configured_guards(ctx)
    limits = [
        guard for guards in tasks.values() for guard in guards if isinstance(guard, RateLimit)
    ]
    backends = [connect_redis(ctx, redis_url, prefix) for prefix in prefixes or (None,)]
    where = redact(backends[0].url)

    def read() -> list[Any]:
        return [read_status(backend, limits=limits) for backend in backends]

    def document(statuses: list[Any]) -> dict[str, Any]:
        return {
            "redis": where,
            "prefixes": [s.as_dict() for s in statuses],
            "tasks": {name: [repr(g) for g in guards] for name, guards in sorted(tasks.items())},
        }

    try:
        if as_json:
            _print_json(read, document, where, watch)
        else:
            _print_tables(read, tasks, where, limit, watch)
    except KeyboardInterrupt:
        pass  # --watch ends with Ctrl-C
    finally:
        for backend in backends:
            backend.close()


def _failure(exc: Exception, where: str) -> click.ClickException:
    return click.ClickException(f"cannot read the status from {where}: {exc}")


def _print_json(
    read: Callable[[], list[Any]],
    document: Callable[[list[Any]], dict[str, Any]],
    where: str,
    watch: float | None,
) -> None:
    from taskguard.errors import TaskGuardError

    while True:
        try:
            doc = document(read())
        except TaskGuardError as exc:
            if watch is None:
                raise _failure(exc, where) from None
            doc = {"redis": where, "error": str(exc)}
        if watch is None:
            click.echo(json.dumps(doc, indent=2))
            return
        click.echo(json.dumps(doc, separators=(",", ":")))
        _sleep(watch)


def _print_tables(
    read: Callable[[], list[Any]],
    tasks: Mapping[str, Sequence[Any]],
    where: str,
    limit: int,
    watch: float | None,
) -> None:
    try:
        from rich.console import Console, Group, RenderableType
        from rich.live import Live
        from rich.text import Text
    except ImportError:  # pragma: no cover - rich comes with the [cli] extra
        raise click.ClickException(
            "the status tables need rich: pip install 'celery-taskguard[cli]' (or use --json)"
        ) from None
    from taskguard.errors import TaskGuardError

    from ._render import render_status, render_tasks

    def screen() -> RenderableType:
        parts: list[RenderableType] = [render_status(s, where, limit) for s in read()]
        if tasks:
            parts.append(render_tasks(tasks, limit))
        return Group(*parts)

    console = Console()
    if watch is None:
        try:
            console.print(screen())
        except TaskGuardError as exc:
            raise _failure(exc, where) from None
        return
    with Live(console=console, auto_refresh=False) as live:
        while True:
            try:
                live.update(screen(), refresh=True)
            except TaskGuardError as exc:  # an outage: say so, and try again
                live.update(Text(f"cannot read the status from {where}: {exc}"), refresh=True)
            _sleep(watch)
