"""(r) Decisions per second on one server, on Redis Cluster and through Sentinel.

One client in this process calls ``rate_limiter(...).try_acquire()`` (a limit far above
what it reaches, so every decision is "allowed") on three topologies started on
loopback: the run's throwaway server, a 3-master cluster with one replica per master
(:class:`taskguard.testing.topologies.RedisCluster`), and a master with one replica
found through 3 sentinels. The variants take turns call by call and a variant's rate is
one over its median call time, as in :mod:`benchmarks.decisions`, so all three see the
same background load.

Then 1000 keys of one keyed rate limit are admitted once each on the cluster, and
``INFO commandstats`` on every master says which served the ``EVALSHA`` calls. Today all
guard state of a prefix is one hash slot, so one master serves them all: the baseline
for spreading keyed guard state over the slots (issue 14, part 2, not built).

A second result, ``clusternoop``, is the issue's goal as stated: guarded no-op throughput
with guard state on the cluster ÷ the same with guard state on one server. Two idle
workers (prefork, ``-c 2``) share the run's broker; one keeps its guard state on that
server, as in (b), the other on the cluster. Rounds alternate between them as (b)'s do
between plain and guarded tasks, and the headline is the median of the per-pair ratios.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import redis

import taskguard
from taskguard.testing import WorkerProcess
from taskguard.testing.topologies import RedisCluster, RedisSentinel

from .celeryrun import APP, client_app, worker_options
from .harness import BenchResult, Context, Goal, Row, interleaved_call_times, median
from .overhead import GUARDED, WARM_UP
from .rounds import Rounds

NAME = "topologies"
TITLE = "rate-limit decisions/s on one server, Redis Cluster and Sentinel; admissions per master"

#: The issue's bound for the cluster against one server (there, on Celery no-op tasks).
GOAL_RATIO = 0.85
KEYS = 1000


def _evalsha_calls(port: int) -> int:
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        stats: dict[str, Any] = client.info("commandstats")
    finally:
        client.close()
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def run(context: Context) -> list[BenchResult]:
    return [_decisions(context), _celery_noop(context)]


def _celery_noop(context: Context) -> BenchResult:
    pairs, tasks = (2, 800) if context.quick else (5, 3000)
    url = context.server.url
    app = client_app(url)
    ratios: list[float] = []
    rates: dict[str, list[float]] = {"one server": [], "cluster": []}
    try:
        with RedisCluster() as cluster:
            states = {"one server": url, "cluster": cluster.url}
            runners: dict[str, Rounds] = {}
            with ExitStack() as workers:
                for name, state in states.items():
                    hostname = f"{context.unique(f'{NAME}-{len(runners)}')}@localhost"
                    options = worker_options(
                        url, prefix=context.unique(f"{NAME}-w{len(runners)}"), state_url=state
                    )
                    idle = context.unique(f"{NAME}-idle-{len(runners)}")
                    worker = workers.enter_context(
                        WorkerProcess(APP, concurrency=2, queues=[idle], hostname=hostname,
                                      **options)
                    )  # fmt: skip
                    label = f"{NAME}-{len(runners)}"  # its queue names, apart
                    runners[name] = Rounds(context, app, hostname, worker.pid, label)
                for runner in runners.values():  # warm-up: connections, script load
                    runner.round(-1, GUARDED, min(tasks, WARM_UP))
                for pair in range(pairs):
                    order = list(states) if pair % 2 == 0 else list(reversed(states))
                    got = {
                        name: runners[name].round(pair, GUARDED, tasks).tasks_per_s
                        for name in order
                    }
                    for name, value in got.items():
                        rates[name].append(value)
                    ratios.append(got["cluster"] / got["one server"])
                for runner in runners.values():
                    runner.close()
    finally:
        app.close()
    ratio = median(ratios)
    rows = [
        Row("guarded no-op: cluster ÷ one server", ratio, "x",
            f"pairs {min(ratios):.3f}-{max(ratios):.3f}"),
        Row("state on one server", median(rates["one server"]), "tasks/s"),
        Row("state on the cluster", median(rates["cluster"]), "tasks/s"),
    ]  # fmt: skip
    goal = Goal(f"guarded no-op on the cluster >= {GOAL_RATIO}x one server", ratio >= GOAL_RATIO,
                ratio)  # fmt: skip
    return BenchResult(
        "clusternoop",
        "guarded no-op throughput, guard state on a 3-master cluster ÷ on one server",
        rows,
        goal,
        details={"ratios": ratios, "rates": rates, "tasks": tasks},
    )


def _decisions(context: Context) -> BenchResult:
    seconds = 2.0 if context.quick else 8.0
    with RedisCluster() as cluster, RedisSentinel() as sentinel:
        urls = {"one server": context.server.url, "cluster": cluster.url}
        urls["sentinel"] = sentinel.url
        clients = {
            name: taskguard.connect(url, prefix=context.unique(f"{NAME}-{i}"))
            for i, (name, url) in enumerate(urls.items())
        }
        limiters = [c.rate_limiter("b", "1000000/s", burst=1_000_000) for c in clients.values()]
        for limiter in limiters:  # connect, load the script
            limiter.try_acquire()
        times = interleaved_call_times([limiter.try_acquire for limiter in limiters], seconds)
        rates = {name: 1e9 / median(t) for name, t in zip(urls, times, strict=True)}

        masters = cluster.master_ports()
        before = {port: _evalsha_calls(port) for port in masters}
        keyed = clients["cluster"].rate_limiter("k", "1000000/s", burst=1_000_000)
        for index in range(KEYS):
            keyed.try_acquire(f"customer-{index}")
        served = {port: _evalsha_calls(port) - before[port] for port in masters}
        for client in clients.values():
            client.close()

    single = rates["one server"]
    ratio = rates["cluster"] / single
    busiest = max(served.values()) / max(sum(served.values()), 1)
    rows = [
        Row("cluster / one server", ratio, "x", f"{rates['cluster']:,.0f} vs {single:,.0f}/s"),
        Row("one server", single, "dec/s", "median call"),
        Row("cluster (3 masters, 1 replica each)", rates["cluster"], "dec/s"),
        Row("sentinel (master + replica)", rates["sentinel"], "dec/s"),
        Row(f"busiest master's share, {KEYS} keys", busiest * 100, "%", "one slot per prefix"),
    ]
    goal = Goal(
        f"cluster decisions/s >= {GOAL_RATIO}x one server (in-process calls)",
        ratio >= GOAL_RATIO,
        ratio,
    )
    return BenchResult(
        NAME,
        TITLE,
        rows,
        goal,
        details={"rates": rates, "evalsha_per_master": served, "seconds": seconds},
    )
