"""``taskguard events``: a live tail of a prefix's guard events, from every process."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import click

from taskguard.events.schema import EVENT_TYPES

from ._connect import connect_redis, prefix_option, redis_url_option

__all__ = ["events", "render"]


def _value(value: Any) -> str:
    if isinstance(value, str) and value and not any(c.isspace() or c in "\"'=" for c in value):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def render(event: Any) -> str:
    """One line for ``event``: UTC time, type, host[pid], then its non-null fields.

    Example:
        >>> from taskguard.events import Event
        >>> render(Event("admin", 0.25, "tg", "ops-1", 7, {"action": "breaker_open",
        ...     "name": "partner api", "key": None}))
        '1970-01-01T00:00:00.250Z admin ops-1[7] action=breaker_open name="partner api"'
    """
    when = datetime.fromtimestamp(event.at, timezone.utc)
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
    fields = " ".join(f"{k}={_value(v)}" for k, v in event.fields.items() if v is not None)
    return f"{stamp} {event.type} {event.host}[{event.pid}] {fields}".rstrip()


@click.command(short_help="Tail guard events, fleet-wide (breakers, leases, dead letters...).")
@redis_url_option
@prefix_option()
@click.option(
    "--type",
    "types",
    multiple=True,
    type=click.Choice(list(EVENT_TYPES)),
    help="Show only this event type (repeatable). Default: every type.",
)
@click.option("--json", "as_json", is_flag=True, help="Print each event's JSON message.")
@click.option(
    "--count",
    type=click.IntRange(1),
    default=None,
    metavar="N",
    help="Exit after N events.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Exit when no event came for SECONDS; with --count, exit 1 if fewer than N came.",
)
@click.pass_context
def events(
    ctx: click.Context,
    *,
    redis_url: str | None,
    prefix: str | None,
    types: tuple[str, ...],
    as_json: bool,
    count: int | None,
    timeout: float | None,
) -> None:
    """Print the guard events of a key prefix as they are published, one line each:
    breaker transitions, lost leases, dead letters, exhausted deferral caps, limit
    changes and admin actions, from every worker and host (docs/observability.md).

    Runs until Ctrl-C, --count events or --timeout. Pub/sub keeps nothing: only events
    published while it runs are shown.
    """
    from taskguard.errors import TaskGuardError
    from taskguard.events import subscribe

    backend = connect_redis(ctx, redis_url, prefix)
    try:
        stream = subscribe(backend, types=types or None, timeout=timeout)
    except TaskGuardError as exc:
        backend.close()
        raise click.ClickException(str(exc)) from None
    click.echo(f"listening on {backend.keys.events()} (Ctrl-C to stop)", err=True)
    received = 0
    try:
        for event in stream:
            click.echo(event.to_json() if as_json else render(event))
            received += 1
            if count is not None and received >= count:
                break
    except KeyboardInterrupt:
        return
    except TaskGuardError as exc:  # the subscription was refused (NOPERM)
        raise click.ClickException(str(exc)) from None
    finally:
        stream.close()
        backend.close()
    if count is not None and received < count:
        raise click.ClickException(f"{received} of {count} event(s) came before the timeout")
