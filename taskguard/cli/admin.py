"""``taskguard lock release`` and ``taskguard breaker open|close|reset``: operator actions.

The actions are :func:`taskguard.status.release_lock` and
:func:`taskguard.status.force_breaker`; this module parses, confirms and reports, and
publishes an ``admin`` guard event for each action done (the audit trail
``taskguard events`` shows, fleet-wide).
"""

from __future__ import annotations

import getpass
from typing import Any

import click

from ._connect import connect_redis, prefix_option, redis_url_option

__all__ = ["breaker", "lock"]


@click.group(short_help="Act on held locks.")
def lock() -> None:
    """Act on held locks (`taskguard status` lists them)."""


def _shown(key: str | None) -> str:
    return "no key" if key is None else f"key {key!r}"


def _user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # no login name in this environment: the event says null
        return None


def _audit(backend: Any, action: str, name: str, **fields: Any) -> None:
    """Publish the ``admin`` event of an action done; a failure is a note, not an error
    (the action itself succeeded)."""
    from taskguard.events import publish_event

    if not publish_event(backend, "admin", action=action, name=name, user=_user(), **fields):
        click.echo("note: the admin event was not published (see the warning)", err=True)


@lock.command(short_help="Release a held lock, whoever holds it (needs --force).")
@redis_url_option
@prefix_option()
@click.argument("name")
@click.argument("key", required=False)
@click.option("--force", is_flag=True, help="Release it: without this, only show the holder.")
@click.option(
    "--tag",
    default=None,
    help="The rendered tag= of a Lock guard that has one (it places the lock on Redis Cluster).",
)
@click.pass_context
def release(
    ctx: click.Context,
    *,
    redis_url: str | None,
    prefix: str | None,
    name: str,
    key: str | None,
    force: bool,
    tag: str | None,
) -> None:
    """Release lock NAME (KEY: its key; none for a key-less lock), whoever holds it.

    For a task's Lock guard, NAME is the guard's name (the task's name by default) and KEY
    the rendered key template, as `taskguard status` shows them. The holder is not
    stopped: its next renewal finds the lock gone (the lease_lost signal), and the next
    holder gets a larger fencing token, so a store that checks tokens refuses the old
    holder's late writes. A waiter, or the first task parked on the lock, gets it next.

    Exits with 1 if the lock is not held, or without --force.
    """
    from taskguard.errors import TaskGuardError
    from taskguard.status import release_lock

    backend = connect_redis(ctx, redis_url, prefix)
    try:
        if not force:
            holder = backend.owner(backend.keys.lock(name, key, tag=tag))
            if holder is None:
                raise click.ClickException(f"lock {name!r} ({_shown(key)}) is not held")
            click.echo(f"lock {name!r} ({_shown(key)}) is held by {holder}")
            raise click.ClickException("not released: add --force to release it")
        done = release_lock(backend, name, key, tag=tag)
        if done.released:
            fence = done.fencing_token
            _audit(backend, "lock_release", name, key=key, owner=done.owner, fencing_token=fence)
    except TaskGuardError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        backend.close()
    if done.owner is None:
        raise click.ClickException(
            f"lock {name!r} ({_shown(key)}) is not held (`taskguard status` lists held locks)"
        )
    if not done.released:
        raise click.ClickException(
            f"lock {name!r} ({_shown(key)}) changed hands while being released; run again"
        )
    token = "" if done.fencing_token is None else f", fencing token {done.fencing_token}"
    click.echo(f"released lock {name!r} ({_shown(key)}), held by {done.owner}{token}")
    if done.parked:
        click.echo("tasks are parked on it: the next sweep hands the first one back")


@click.group(short_help="Force a circuit breaker open, close it or reset it.")
def breaker() -> None:
    """Force a circuit breaker's state, fleet-wide (`taskguard status` lists them)."""


def _breaker_command(action: str, summary: str, doc: str) -> click.Command:
    @breaker.command(action, short_help=summary, help=doc)
    @redis_url_option
    @prefix_option()
    @click.argument("name")
    @click.pass_context
    def command(
        ctx: click.Context, *, redis_url: str | None, prefix: str | None, name: str
    ) -> None:
        from taskguard.errors import TaskGuardError
        from taskguard.status import force_breaker

        backend = connect_redis(ctx, redis_url, prefix)
        try:
            change = force_breaker(backend, name, action)
            _audit(backend, f"breaker_{action}", name, before=change.before, after=change.after)
        except TaskGuardError as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            backend.close()
        click.echo(f"breaker {name!r}: {change.before} -> {change.after}")
        if change.existed is False:
            click.echo(
                f"note: no breaker {name!r} had state under prefix {backend.keys.prefix!r}; "
                "check the name (`taskguard status` lists breakers)",
                err=True,
            )

    return command


_breaker_command(
    "open",
    "Refuse every call until closed or reset.",
    "Force breaker NAME open: every worker refuses (defers) its calls until `close` or "
    "`reset`; probes do not close it.",
)
_breaker_command(
    "close",
    "Close it now, with an empty window.",
    "Close breaker NAME now, with an empty window and no open-time growth; a forced state ends.",
)
_breaker_command(
    "reset",
    "Forget its state entirely.",
    "Forget breaker NAME's state (closed, empty window, no growth, nothing forced).",
)
