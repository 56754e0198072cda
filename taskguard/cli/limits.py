"""``taskguard limit set|clear|show``: change a limit for the whole fleet, live.

Three kinds (``--kind``): a rate limiter's rate (``rate``, the default: ``"100/s"``), a
concurrency cap's slot count (``cap``: an integer) and a calendar quota's allowance
(``quota``: ``"N/day"``, ``"N/week"`` or ``"N/month"``). The value is stored in Redis
(:mod:`taskguard.backend.limits`) and read by the admission script, so every worker applies
it from its next admission on (a rate: within a second); no restart, no deploy. Each change
is published as a ``limit_changed`` guard event (``taskguard events``).
"""

from __future__ import annotations

import json
from typing import Any

import click

from ._connect import connect_redis, prefix_option, redis_url_option

__all__ = ["limit"]

_KIND = click.option(
    "--kind",
    type=click.Choice(["rate", "cap", "quota"]),
    default="rate",
    show_default=True,
    help="What NAME is: a rate limiter, a concurrency cap or a calendar quota.",
)


@click.group(short_help="Change rate limits, caps and quotas at run time.")
def limit() -> None:
    """Change rate limits, concurrency caps and quotas at run time, for every worker at once."""


@limit.command(name="set", short_help="Set a limit (for all keys, or one).")
@redis_url_option
@prefix_option()
@click.argument("name")
@click.argument("value")
@_KIND
@click.option("--key", default=None, help="One key (a rendered key, e.g. a tenant id).")
@click.option(
    "--burst", type=click.IntRange(min=1), default=None, help="A rate's burst (default 1)."
)
@click.pass_context
def set_(
    ctx: click.Context,
    *,
    redis_url: str | None,
    prefix: str | None,
    name: str,
    value: str,
    kind: str,
    key: str | None,
    burst: int | None,
) -> None:
    """Set NAME's limit to VALUE, for one --key or every key.

    \b
    --kind rate  (default) VALUE is a rate: "100/s", "30/5m"; --burst sets its burst
    --kind cap   VALUE is a concurrency cap's slot count: "3"
    --kind quota VALUE is a quota's allowance: "500/day", "1000/week", "9000/month";
                 a quota of another period ignores it

    NAME is the guard's name (a task's guards are named after the task unless given a
    name). It holds until `taskguard limit clear`, and wins over the code's value and its
    per_key values; a key's own entry wins over the every-key one.
    """
    from taskguard._limits import KINDS, scope, set_of_kind
    from taskguard.client import Client
    from taskguard.errors import ConfigurationError, TaskGuardError

    if burst is not None and kind != "rate":
        raise click.BadParameter("only a rate has a burst", param_hint="--burst")
    backend = connect_redis(ctx, redis_url, prefix)
    try:
        shown = set_of_kind(Client(backend), kind, name, value, key=key, burst=burst or 1)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), param_hint="VALUE") from None
    except TaskGuardError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        backend.close()
    click.echo(f"{KINDS[kind]} {name!r}, {scope(kind, key)}: {shown} from now on")


@limit.command(short_help="Remove a limit set at run time.")
@redis_url_option
@prefix_option()
@click.argument("name")
@_KIND
@click.option("--key", default=None, help="The key whose limit to clear.")
@click.pass_context
def clear(
    ctx: click.Context,
    *,
    redis_url: str | None,
    prefix: str | None,
    name: str,
    kind: str,
    key: str | None,
) -> None:
    """Remove the limit set for NAME (--key: one key's): its configured one applies again.

    Exits with 1 if none was set.
    """
    from taskguard._limits import KINDS, VALUES, clear_of_kind, scope
    from taskguard.client import Client
    from taskguard.errors import TaskGuardError

    backend = connect_redis(ctx, redis_url, prefix)
    try:
        removed = clear_of_kind(Client(backend), kind, name, key=key)
    except TaskGuardError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        backend.close()
    what = VALUES[kind]
    if not removed:
        raise click.ClickException(f"no {what} was set for {name!r}, {scope(kind, key)}")
    click.echo(f"{KINDS[kind]} {name!r}, {scope(kind, key)}: back to its configured {what}")


@limit.command(short_help="List the limits set at run time for a name.")
@redis_url_option
@prefix_option()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="One JSON list.")
@click.pass_context
def show(
    ctx: click.Context, *, redis_url: str | None, prefix: str | None, name: str, as_json: bool
) -> None:
    """List the rates, slot counts and allowances set at run time for NAME."""
    from taskguard._limits import KINDS, scope
    from taskguard.backend.limits import caps_of, limits_of, quotas_of
    from taskguard.errors import TaskGuardError

    backend = connect_redis(ctx, redis_url, prefix)
    try:
        rates, caps, quotas = (
            limits_of(backend, name),
            caps_of(backend, name),
            quotas_of(backend, name),
        )
    except TaskGuardError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        backend.close()
    rows: list[tuple[str, str | None, dict[str, Any], str]] = [
        (
            "rate",
            o.key,
            {"per_second": o.per_second, "burst": o.burst},
            f"{o.per_second:g}/s (burst {o.burst})",
        )
        for o in rates
    ]
    rows += [("cap", o.key, {"limit": o.limit}, f"{o.limit} slots") for o in caps]
    rows += [("quota", o.key, {"calls": o.calls, "period": o.period}, str(o)) for o in quotas]
    if as_json:
        found = [
            {"kind": kind, "name": name, "key": key, **fields} for kind, key, fields, _ in rows
        ]
        click.echo(json.dumps(found))
        return
    if not rows:
        click.echo(f"{name!r}: no limit set at run time")
    for kind, key, _, shown in rows:
        click.echo(f"{KINDS[kind]} {name!r}, {scope(kind, key)}: {shown}")
