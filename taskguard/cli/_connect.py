"""What the operator commands share: the ``--redis-url`` and ``--prefix`` options, and the
connection they make.

Run as ``celery -A proj taskguard ...``, the commands read the app's taskguard settings:
its Redis (``redis_url``, ``$TASKGUARD_REDIS_URL``, a Redis broker, as a worker finds it),
its ``key_prefix`` and ``redis_options``, and its guarded tasks. The options override them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from taskguard.errors import ConfigurationError

__all__ = [
    "celery_app",
    "configured_guards",
    "connect_redis",
    "prefix_option",
    "redis_url_option",
]

#: Seconds a status read may wait for a reply: a pipeline of thousands of reads is one
#: reply, and an operator would rather wait than see a timeout (a worker's is 0.5 s).
SOCKET_TIMEOUT = 5.0

_NOT_REDIS = "must be a redis://, rediss://, unix://, redis+cluster:// or redis+sentinel:// URL"

FC = TypeVar("FC", bound=Callable[..., Any])

redis_url_option = click.option(
    "--redis-url",
    envvar="TASKGUARD_REDIS_URL",
    metavar="URL",
    help="The Redis holding the guard state [env: TASKGUARD_REDIS_URL; under "
    "`celery -A app`: the app's, as its workers find it; else redis://localhost:6379/0].",
)


def prefix_option(*, multiple: bool = False) -> Callable[[FC], FC]:
    """``--prefix`` (repeatable when ``multiple``)."""
    return click.option(
        "--prefix",
        "prefixes" if multiple else "prefix",
        envvar="TASKGUARD_PREFIX",
        multiple=multiple,
        metavar="PREFIX",
        help="The key prefix [env: TASKGUARD_PREFIX; under `celery -A app`: the app's "
        "key_prefix; else tg]." + (" Repeat for several." if multiple else ""),
    )


def celery_app(ctx: click.Context) -> Any | None:
    """The Celery app when run as ``celery [-A app] taskguard ...``, else None."""
    return getattr(ctx.obj, "app", None)


def connect_redis(ctx: click.Context, redis_url: str | None, prefix: str | None) -> Any:
    """The :class:`~taskguard.backend.RedisBackend` for the options (and the app's
    settings under ``celery``); a bad option or setting is a click error."""
    from taskguard.backend import RedisBackend, backend_from_url

    options: dict[str, Any] = {"socket_timeout": SOCKET_TIMEOUT}
    app = celery_app(ctx)
    try:
        if app is not None:
            from taskguard.celery import runtime_for

            runtime = runtime_for(app)
            redis_url = redis_url or runtime.redis_url()
            prefix = prefix or runtime.settings.key_prefix
            options["redis_options"] = dict(runtime.settings.redis_options)
        if (redis_url or "").startswith("memory://"):
            raise ValueError("memory:// holds no state another process can read")
        backend = backend_from_url(redis_url, prefix=prefix, **options)
    except ConfigurationError as exc:
        hint = "--prefix" if exc.field in ("key_prefix", "prefix") else None
        raise click.BadParameter(str(exc), param_hint=hint) from None
    except ValueError as exc:
        raise click.BadParameter(f"{exc}; {_NOT_REDIS}", param_hint="--redis-url") from None
    if not isinstance(backend, RedisBackend):  # pragma: no cover - backend_from_url's schemes
        backend.close()
        raise click.BadParameter(_NOT_REDIS, param_hint="--redis-url")
    return backend


def configured_guards(ctx: click.Context) -> dict[str, tuple[Any, ...]]:
    """Task name -> its effective guards, for the app's guarded tasks (under ``celery``).

    Raises:
        click.ClickException: A task's guards or the settings are invalid.
    """
    app = celery_app(ctx)
    if app is None:
        return {}
    from taskguard.celery import runtime_for

    try:
        tasks = runtime_for(app).guarded_tasks()
        return {task.name: tuple(task.taskguard_settings.guards) for task in tasks}
    except ConfigurationError as exc:
        raise click.ClickException(f"the app's taskguard settings: {exc}") from None
