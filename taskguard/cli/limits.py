"""``taskguard limit set|clear|show``: change a rate limit for the whole fleet, live.

The rate is stored in Redis (:mod:`taskguard.backend.limits`) and read by the admission
script, so every worker applies it within a second; no restart, no deploy.
Each change is published as a ``limit_changed`` guard event (``taskguard events``).
"""

from __future__ import annotations

import click

from ._connect import connect_redis, prefix_option, redis_url_option

__all__ = ["limit"]


@click.group(short_help="Change rate limits at run time.")
def limit() -> None:
    """Change rate limits at run time, for every worker at once."""


def _bucket(key: str | None) -> str:
    return "every bucket" if key is None else f"bucket {key!r}"


@limit.command(name="set", short_help="Set a limiter's rate (all buckets, or one).")
@redis_url_option
@prefix_option()
@click.argument("name")
@click.argument("rate")
@click.option("--key", default=None, help="One bucket (a rendered key, e.g. a tenant id).")
@click.option("--burst", type=click.IntRange(min=1), default=1, show_default=True)
@click.pass_context
def set_(
    ctx: click.Context,
    *,
    redis_url: str | None,
    prefix: str | None,
    name: str,
    rate: str,
    key: str | None,
    burst: int,
) -> None:
    """Set rate limiter NAME to RATE ("100/s", "30/5m"), for one --key or every bucket.

    NAME is the limiter's name (a task's RateLimit is named after the task unless given a
    name). It holds until `taskguard limit clear`; a bucket's own rate wins over the
    all-buckets one.
    """
    from taskguard._validate import rate as check_rate
    from taskguard.client import Client
    from taskguard.errors import TaskGuardError

    try:
        parsed = check_rate(rate, "rate")
    except TaskGuardError as exc:
        raise click.BadParameter(str(exc), param_hint="RATE") from None
    backend = connect_redis(ctx, redis_url, prefix)
    try:
        Client(backend).set_limit(name, parsed, burst=burst, key=key)
    except TaskGuardError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        backend.close()
    click.echo(f"rate limit {name!r}, {_bucket(key)}: {parsed} (burst {burst}) from now on")


@limit.command(short_help="Remove a rate set at run time.")
@redis_url_option
@prefix_option()
@click.argument("name")
@click.option("--key", default=None, help="The bucket whose rate to clear.")
@click.pass_context
def clear(
    ctx: click.Context, *, redis_url: str | None, prefix: str | None, name: str, key: str | None
) -> None:
    """Remove the rate set for NAME (--key: one bucket's): its configured rate applies again.

    Exits with 1 if none was set.
    """
    from taskguard.client import Client
    from taskguard.errors import TaskGuardError

    backend = connect_redis(ctx, redis_url, prefix)
    try:
        removed = Client(backend).clear_limit(name, key=key)
    except TaskGuardError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        backend.close()
    if not removed:
        raise click.ClickException(f"no rate was set for {name!r}, {_bucket(key)}")
    click.echo(f"rate limit {name!r}, {_bucket(key)}: back to its configured rate")


@limit.command(short_help="List the rates set at run time for a limiter.")
@redis_url_option
@prefix_option()
@click.argument("name")
@click.pass_context
def show(ctx: click.Context, *, redis_url: str | None, prefix: str | None, name: str) -> None:
    """List the rates set at run time for rate limiter NAME."""
    from taskguard.backend.limits import limits_of
    from taskguard.errors import TaskGuardError

    backend = connect_redis(ctx, redis_url, prefix)
    try:
        found = limits_of(backend, name)
    except TaskGuardError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        backend.close()
    if not found:
        click.echo(f"rate limit {name!r}: no rate set at run time")
    for override in found:
        click.echo(
            f"rate limit {name!r}, {_bucket(override.key)}: "
            f"{override.per_second:g}/s (burst {override.burst})"
        )
