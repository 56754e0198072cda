"""(r) Decisions per second on one server, on Redis Cluster and through Sentinel.

One client in this process calls ``rate_limiter(...).try_acquire()`` (a limit far above
what it reaches, so every decision is "allowed") on three topologies started on
loopback: the run's throwaway server, a 3-master cluster with one replica per master
(:class:`taskguard.testing.topologies.RedisCluster`), and a master with one replica
found through 3 sentinels. The variants take turns call by call and a variant's rate is
one over its median call time, as in :mod:`benchmarks.decisions`, so all three see the
same background load.

Then a task's per-key guards (a ``RateLimit`` and a ``Concurrency`` cap, both keyed by
the customer) are admitted for 1000 customers on the cluster, after ``CONFIG RESETSTAT``
on every master, and ``INFO commandstats`` says which master served each ``EVALSHA``:
result ``clustershare``, whose goal is that no master serves more than 40 % (keyed guard
state spreads over the slots: issue 14, part 2). The slots are given back afterwards,
outside the count.

A second result, ``clusternoop``, is the issue's goal as stated: guarded no-op throughput
with guard state on the cluster ÷ the same with guard state on one server. Two idle
workers (prefork, ``-c 2``) share the run's broker; one keeps its guard state on that
server, as in (b), the other on the cluster. Rounds alternate between them as (b)'s do
between plain and guarded tasks, and the headline is the median of the per-pair ratios.
"""

from __future__ import annotations

from contextlib import ExitStack

import taskguard
from taskguard import Concurrency, RateLimit
from taskguard.testing import WorkerProcess
from taskguard.testing.topologies import RedisCluster, RedisSentinel

from .celeryrun import APP, client_app, worker_options
from .harness import BenchResult, Context, Goal, Row, interleaved_call_times, median
from .overhead import GUARDED, WARM_UP
from .rounds import Rounds
from .slotcalls import evalsha_per_master

NAME = "topologies"
TITLE = "rate-limit decisions/s on one server, Redis Cluster and Sentinel; admissions per master"

#: The issue's bound for the cluster against one server (there, on Celery no-op tasks).
GOAL_RATIO = 0.85
KEYS = 1000
#: The issue's bound on the busiest master's share of the keyed admissions.
GOAL_SHARE = 0.40


def run(context: Context) -> list[BenchResult]:
    decisions, share = _decisions(context)
    return [decisions, share, _celery_noop(context)]


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


def _decisions(context: Context) -> tuple[BenchResult, BenchResult]:
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

        served = _per_key_admissions(clients["cluster"].backend, cluster.master_ports())
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
    ]
    goal = Goal(
        f"cluster decisions/s >= {GOAL_RATIO}x one server (in-process calls)",
        ratio >= GOAL_RATIO,
        ratio,
    )
    total = max(sum(served.values()), 1)
    share_rows = [
        Row(f"master :{port}", calls / total * 100, "%", f"{calls} EVALSHA")
        for port, calls in sorted(served.items())
    ]
    share = BenchResult(
        "clustershare",
        f"per-key admissions ({KEYS} customers, limit + cap): each master's share",
        share_rows,
        Goal(f"no master serves more than {GOAL_SHARE:.0%}", busiest <= GOAL_SHARE, busiest),
        details={"evalsha_per_master": served, "keys": KEYS},
    )
    details = {"rates": rates, "seconds": seconds}
    return BenchResult(NAME, TITLE, rows, goal, details=details), share


def _per_key_admissions(backend: taskguard.Backend, masters: list[int]) -> dict[int, int]:
    """Admit a per-customer limit and cap for :data:`KEYS` customers (one admission each:
    both guards are in the customer's slot); ``EVALSHA`` calls per master."""
    limit = RateLimit("1000000/s", burst=1_000_000, key="{customer}", name="k")
    cap = Concurrency(1_000_000, key="{customer}", name="c")
    held = []
    evalsha_per_master(masters, reset=True)
    for index in range(KEYS):
        customer = f"customer-{index}"
        slot = cap.slot_op(backend.keys, customer, f"bench-{index}")
        if backend.admit([limit.op(backend.keys, customer), slot]).allowed:
            held.append(slot)
    served = evalsha_per_master(masters)
    backend.release(held)  # one call per slot, outside the count
    return served
