"""``taskguard drain`` and ``taskguard requeue-dead-letters``: the drain pool outside Celery."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import click

from taskguard.celery._metrics_settings import MetricsSettings
from taskguard.drain.config import DrainSettings
from taskguard.errors import ConfigurationError

if TYPE_CHECKING:
    from taskguard.drain import DrainPool

__all__ = ["drain", "requeue_dead_letters"]

logger = logging.getLogger("taskguard.drain")

T = TypeVar("T")

_NOT_REDIS = "must be a redis://, rediss://, unix://, redis+cluster:// or redis+sentinel:// URL"

_redis_url = click.option(
    "--redis-url",
    envvar="TASKGUARD_REDIS_URL",
    metavar="URL",
    help="The Redis the cache writes to [env: TASKGUARD_REDIS_URL; default "
    "redis://localhost:6379/0].",
)
_prefix = click.option(
    "--prefix",
    envvar="TASKGUARD_PREFIX",
    default="tg",
    show_default=True,
    help="The key prefix the cache uses [env: TASKGUARD_PREFIX].",
)


@click.command(short_help="Drain write-behind queues into a database until stopped.")
@_redis_url
@click.option(
    "--store",
    "store_url",
    envvar=["TASKGUARD_STORE_URL", "TASKGUARD_DB_URL"],
    required=True,
    metavar="URL",
    help="The database: postgresql://... or sqlite:///path.db, or any scheme registered "
    "with taskguard.sinks.register_store "
    "[env: TASKGUARD_STORE_URL, else TASKGUARD_DB_URL as for `taskguard demo`].",
)
@click.option("--table", default=None, help="The store's table [default: taskguard_kv].")
@click.option(
    "--namespace",
    "namespaces",
    multiple=True,
    metavar="NS",
    help="A namespace to drain (repeatable). Default: every registered namespace.",
)
# The defaults below are the drain settings' (DrainSettings), and the values are checked
# by DrainSettings too: the worker's drain and this command cannot drift apart.
@click.option(
    "--workers", type=int, default=DrainSettings.workers, show_default=True, help="Drain threads."
)
@_prefix
@click.option(
    "--batch-size",
    type=int,
    default=DrainSettings.batch_size,
    show_default=True,
    help="Most records read from one partition per batch.",
)
@click.option(
    "--linger",
    type=float,
    default=DrainSettings.linger,
    show_default=True,
    help="Seconds a batch may wait to fill.",
)
@click.option(
    "--lease-ttl",
    type=float,
    default=DrainSettings.lease_ttl,
    show_default=True,
    help="Seconds a partition lease outlives a crashed drain.",
)
@click.option(
    "--max-deliveries",
    type=int,
    default=DrainSettings.max_deliveries,
    show_default=True,
    help="Deliveries after which a record is dead-lettered.",
)
@click.option(
    "--claim-idle",
    type=float,
    default=DrainSettings.claim_idle,
    show_default=True,
    help="Seconds before another consumer's unacknowledged records are claimed.",
)
@click.option(
    "--backoff-base",
    type=float,
    default=DrainSettings.backoff_base,
    show_default=True,
    help="First retry delay after a transient store error.",
)
@click.option(
    "--backoff-max",
    type=float,
    default=DrainSettings.backoff_max,
    show_default=True,
    help="Longest retry delay.",
)
@click.option(
    "--status-interval",
    type=click.FloatRange(0.1),
    default=10.0,
    show_default=True,
    help="Seconds between status lines.",
)
@click.option(
    "--stop-timeout",
    type=float,
    default=DrainSettings.stop_timeout,
    show_default=True,
    help="Seconds to wait for in-flight batches at shutdown.",
)
@click.option("--log-level", default="INFO", show_default=True)
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    envvar="TASKGUARD_METRICS_PORT",
    help="Serve Prometheus metrics on this port (needs the prometheus extra) "
    "[env: TASKGUARD_METRICS_PORT].",
)
@click.option(
    "--metrics-address", default="0.0.0.0", show_default=True, help="Address of the metrics port."
)
@click.option(
    "--events/--no-events",
    "publish_events",
    default=True,
    show_default=True,
    help="Publish dead letters as guard events on <prefix>:events (`taskguard events`).",
)
def drain(
    *,
    redis_url: str | None,
    store_url: str,
    table: str | None,
    namespaces: tuple[str, ...],
    prefix: str,
    status_interval: float,
    log_level: str,
    metrics_port: int | None,
    metrics_address: str,
    publish_events: bool,
    **tunables: Any,
) -> None:
    """Run a drain pool until SIGTERM or SIGINT, then stop cleanly: the in-flight batches
    are written and acknowledged, the partition leases released.

    Run as many as you like, on as many hosts: each takes its share of the partitions.
    """
    from taskguard import events
    from taskguard.backend import RedisBackend, backend_from_url
    from taskguard.drain import freeze_heap, pool_from_settings, store_from_settings

    raw = {"enabled": True, "store": store_url, "table": table, "namespaces": namespaces}
    settings = _settings(raw | tunables)
    backend = _checked(lambda p: backend_from_url(redis_url, prefix=p), prefix)
    if not isinstance(backend, RedisBackend):
        raise click.BadParameter(_NOT_REDIS, param_hint="--redis-url")
    store = _checked(store_from_settings, settings)
    metrics = _checked(
        MetricsSettings.from_mapping, {"port": metrics_port, "address": metrics_address}
    )
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    pool = pool_from_settings(backend, settings, store)
    stopping = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server = _serve_metrics(metrics, backend, settings.namespaces)
    if publish_events:
        events.install(backend)
    frozen = freeze_heap()  # what was built to get here lives as long as the process
    logger.debug("drain: %d objects kept out of the garbage collector's way", frozen)
    pool.start()
    try:
        while not stopping.wait(status_interval):
            _status(pool)
    finally:
        logger.info("drain: stopping (flushing in-flight batches)")
        pool.stop(settings.stop_timeout)
        _status(pool)
        store.close()
        if server is not None:
            server.shutdown()
        if publish_events:
            events.uninstall()
        backend.close()


def _serve_metrics(metrics: MetricsSettings, backend: Any, namespaces: tuple[str, ...]) -> Any:
    """Count and serve the drain's metrics when ``--metrics-port`` asks for them."""
    if metrics.port is None:
        return None
    from taskguard.integrations import prometheus

    prometheus.install()
    return prometheus.serve(metrics.port, backend, address=metrics.address, namespaces=namespaces)


#: The option of each drain setting whose parameter is named otherwise.
_PARAMETERS = {
    "store": "store_url",
    "key_prefix": "prefix",
    "metrics.port": "metrics_port",
    "metrics.address": "metrics_address",
}


def _settings(raw: dict[str, Any]) -> DrainSettings:
    """The options, validated as the worker validates its ``drain`` settings."""
    return _checked(DrainSettings.from_mapping, raw)


def _checked(build: Callable[[Any], T], value: Any) -> T:
    """``build(value)``, a ConfigurationError turned into click's error for its option."""
    try:
        return build(value)
    except ConfigurationError as exc:
        context = click.get_current_context()
        setting = (exc.field or "").removeprefix("drain.")
        name = _PARAMETERS.get(setting, setting)
        param = next((p for p in context.command.params if p.name == name), None)
        raise click.BadParameter(exc.reason, ctx=context, param=param) from None


def _status(pool: DrainPool) -> None:
    try:
        m = pool.metrics()
    except Exception as exc:  # a status line must never stop the drain
        logger.warning("drain: status unavailable: %s", exc)
        return
    logger.info(
        "drain: %.1f rows/s, backlog %d (oldest %.1fs), pending %d, dead letters %d, "
        "%d rows written from %d records, %d partition(s) held",
        m.rows_per_second,
        m.backlog,
        m.oldest_age,
        m.pending,
        m.dead_letters,
        m.rows_written,
        m.records_acked,
        len(pool.held()),
    )


@click.command("requeue-dead-letters", short_help="Queue a namespace's dead-lettered writes again.")
@_redis_url
@_prefix
@click.option("--namespace", required=True, metavar="NS", help="The write-behind namespace.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Re-queue at most this many.")
def requeue_dead_letters(
    *, redis_url: str | None, prefix: str, namespace: str, limit: int | None
) -> None:
    """Put dead-lettered records back in their partition streams (fix the cause first).

    Each keeps its original version, so it never overwrites a newer write of its key.
    """
    from taskguard.backend import RedisBackend, backend_from_url
    from taskguard.drain import requeue_dead_letters as requeue

    backend = _checked(lambda p: backend_from_url(redis_url, prefix=p), prefix)
    if not isinstance(backend, RedisBackend):
        raise click.BadParameter(_NOT_REDIS, param_hint="--redis-url")
    count = requeue(backend, namespace, limit=limit)
    click.echo(f"re-queued {count} dead letter(s) of {namespace!r}")
