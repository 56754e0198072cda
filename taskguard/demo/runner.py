"""Run the whole demo: find or start a Redis, run each stage, print the report, clean up."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from taskguard.urls import redact, scrub, secrets_of

from .breaker_report import breaker_held, render_timeline
from .breaker_stage import BREAKER_TITLE, CALLS_PER_SECOND, run_breaker_stage
from .cluster_report import cluster_held
from .cluster_stage import CLUSTER_TITLE, run_cluster_stage
from .config import STAGES, DemoConfig
from .park_report import park_held
from .park_stage import PARK_TITLE, run_park_stage, stage_concurrency
from .partner import PartnerStub
from .report import Header, render_header, render_results, taskguard_held
from .server import EmbeddedRedis
from .stages import DemoError, run_stage
from .tasks import create_app
from .writebehind_report import writebehind_held
from .writebehind_stage import WRITEBEHIND_TITLE, run_writebehind_stage

__all__ = ["DemoOptions", "run_demo"]


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    """The demo's command-line options.

    Attributes:
        redis_url: Use this Redis (broker and guard state) instead of an embedded one.
        redis_source: Where ``redis_url`` came from, for the header.
        db_url: Database for the write-behind stage; a SQLite file when ``None``.
        seconds: Measured load per stage.
        workers: Worker instances in each stage's fleet.
        concurrency: Pool processes per worker.
        rate: The limit both stages configure, in tasks per second.
    """

    redis_url: str | None = None
    redis_source: str = "--redis-url"
    db_url: str | None = None
    seconds: float = 8.0
    workers: int = 3
    concurrency: int = 1
    rate: int = 10


def _delete_keys(url: str, prefix: str) -> int:
    """Delete every key of this run (``prefix:*``) from a Redis the demo did not start."""
    client = redis.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[Any] = []
        for key in client.scan_iter(match=f"{prefix}:*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(client.delete(*batch))
                batch.clear()
        if batch:
            deleted += int(client.delete(*batch))
    finally:
        client.close()
    return deleted


def _check_redis_transport() -> None:
    """Fail early, and say what to install, if Celery's Redis transport cannot load."""
    try:
        import kombu.transport.redis  # noqa: F401
    except ImportError as exc:
        raise DemoError(
            f"Celery's Redis transport does not load ({exc}): pip install packaging "
            "(or 'kombu[redis]')"
        ) from exc


def _server_version(url: str) -> str:
    if url.split("://", 1)[0].lower().endswith(("+cluster", "+sentinel")):
        # Celery's Redis broker (kombu) speaks to one server: it has no Cluster client.
        raise DemoError(
            f"the demo runs its Celery broker on the Redis it is given, so it needs one "
            f"server (redis://, rediss:// or unix://), not {redact(url)}; Redis Cluster "
            "and Sentinel hold guard state (redis_url, taskguard.connect), see "
            "docs/topologies.md"
        )
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        info: dict[str, Any] = client.info("server")
    except redis.RedisError as exc:
        reason = scrub(str(exc), secrets_of(url))
        raise DemoError(f"cannot reach Redis at {redact(url)}: {reason}") from exc
    finally:
        client.close()
    return str(info.get("valkey_version") or info.get("redis_version", "?"))


def run_demo(options: DemoOptions, echo: Callable[..., None], version: str) -> int:
    """Run the demo, printing as it goes; return the exit status (0: every verdict held).

    Raises:
        DemoError: A stage could not be measured.
        EmbeddedRedisError: No Redis was given and the embedded one could not start.
    """
    _check_redis_transport()
    workdir = Path(tempfile.mkdtemp(prefix="taskguard-demo-"))
    with ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        if options.redis_url:
            url = options.redis_url
            note = (
                f"redis {_server_version(url)} from {options.redis_source}; only this run's "
                "keys are written, and deleted afterwards"
            )
        else:
            echo("Starting the embedded Redis ...", nl=False)
            server = cleanup.enter_context(EmbeddedRedis(workdir / "redis"))
            url = server.url
            echo(" ok")
            note = f"embedded redis-server {server.version}, started for this run"
        db_url = options.db_url or f"sqlite:///{workdir / 'demo.sqlite3'}"
        config = DemoConfig.new(url, rate=options.rate, db_url=db_url)
        if options.redis_url:
            cleanup.callback(_report_deleted, echo, url, config.prefix)
        app = create_app(config)
        cleanup.callback(app.close)

        header = Header(
            version=version,
            redis_url=url,
            redis_note=note,
            db_url=db_url,
            workers=options.workers,
            concurrency=options.concurrency,
            seconds=options.seconds,
            rate=options.rate,
            prefix=config.prefix,
            calls_per_second=CALLS_PER_SECOND,
            park_concurrency=stage_concurrency(options.workers, options.concurrency),
        )
        echo(render_header(header))
        results = []
        total = len(STAGES) + 4
        for number, stage in enumerate(STAGES, start=1):
            title = {"celery": "Celery's own rate_limit", "taskguard": "taskguard RateLimit"}
            echo(f"\nStage {number}/{total}: {title[stage]} ({options.rate}/s)")
            results.append(
                run_stage(
                    app,
                    config,
                    stage,
                    workers=options.workers,
                    concurrency=options.concurrency,
                    seconds=options.seconds,
                    echo=echo,
                )
            )
        echo(f"\nStage {total - 3}/{total}: {PARK_TITLE}")
        park = run_park_stage(
            app, config, workers=options.workers, concurrency=options.concurrency, echo=echo
        )
        echo(f"\nStage {total - 2}/{total}: {BREAKER_TITLE}")
        with PartnerStub() as stub:
            breaker = run_breaker_stage(
                app,
                config,
                stub,
                workers=options.workers,
                concurrency=options.concurrency,
                echo=echo,
            )
        echo(render_timeline(breaker))
        echo(f"\nStage {total - 1}/{total}: {WRITEBEHIND_TITLE}")
        writebehind = run_writebehind_stage(
            app, config, workers=options.workers, concurrency=options.concurrency, echo=echo
        )
        echo(f"\nStage {total}/{total}: {CLUSTER_TITLE}")
        cluster = run_cluster_stage(
            app, config, workers=options.workers, concurrency=options.concurrency, echo=echo
        )
        echo(render_results(results, breaker, writebehind, park, cluster))
    held = (
        taskguard_held(results[-1])
        and park_held(park)
        and breaker_held(breaker)
        and writebehind_held(writebehind)
        and cluster_held(cluster)
    )
    return 0 if held else 1


def _report_deleted(echo: Callable[..., None], url: str, prefix: str) -> None:
    deleted = _delete_keys(url, prefix)
    echo(f"\nRemoved this run's {deleted} keys ({prefix}:*) from {redact(url)}.")
