"""(b) Overhead: what a guard costs a task, as guarded no-op throughput ÷ plain no-op throughput.

One ``celery worker`` (prefork, ``-c 2``) runs rounds of ``bench.noop`` and
``bench.guarded_noop`` alternately, in the same run and on the same broker. The guarded
task has a ``RateLimit`` so high that it never denies, so each run costs exactly its
admission: one EVALSHA, and no call at the end (rate-limit tokens are spent, not held).

A round pre-fills a fresh queue with ``tasks`` messages, then tells the idle worker to
consume it (``add_consumer``). Its throughput is ``tasks`` divided by the time from the
first message taken to the queue being empty with every message acknowledged. Rounds come
in pairs, plain-then-guarded and guarded-then-plain in turn, so drift on a shared machine
hits both; the headline is the median of the per-pair ratios.

Wall-clock throughput on a shared 2-core machine swings by a third between identical
rounds (the worker, Redis and this process compete for the cores), so each round also
counts the CPU it cost: the worker's processes (main and pool) and the Redis server, per
task. Their ratio, plain ÷ guarded CPU per task, is what the guard costs with the
scheduler's noise taken out; it is reported next to the headline, which stays the
throughput ratio.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import psutil
import redis
from celery import Celery

from taskguard.testing import WorkerProcess

from .celeryrun import (
    APP,
    client_app,
    publish,
    wait_until_drained,
    wait_until_taken,
    worker_options,
)
from .harness import BenchResult, Context, Goal, Row, median
from .servercount import CommandStat, command_stats

NAME = "overhead"
TITLE = "guarded no-op ÷ plain no-op throughput, 1 worker prefork -c2"

PLAIN = "bench.noop"
GUARDED = "bench.guarded_noop"
GOAL = 0.92
WARM_UP = 300


@dataclass(frozen=True)
class Round:
    pair: int
    task: str
    tasks_per_s: float
    #: CPU seconds per task: the worker's main process, its pool processes, Redis.
    main_cpu_per_task: float
    pool_cpu_per_task: float
    redis_cpu_per_task: float

    @property
    def cpu_per_task(self) -> float:
        return self.main_cpu_per_task + self.pool_cpu_per_task + self.redis_cpu_per_task


class _CpuMeter:
    """CPU seconds spent so far by a worker's main process, by its pool processes, and
    by the Redis server."""

    def __init__(self, worker_pid: int, client: redis.Redis) -> None:
        self.worker = psutil.Process(worker_pid)
        self.client = client

    def seconds(self) -> tuple[float, float, float]:
        main = _cpu(self.worker)
        pool = sum(_cpu(child) for child in self.worker.children(recursive=True))
        info = self.client.info("cpu")
        return main, pool, float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:  # a pool process replaced mid-count
        return 0.0
    return float(times.user + times.system)


class _Rounds:
    """Runs rounds on one idle worker, each on a fresh queue."""

    def __init__(self, context: Context, app: Celery, hostname: str, worker_pid: int) -> None:
        self.context = context
        self.app = app
        self.client = context.client()
        self.hostname = hostname
        self.meter = _CpuMeter(worker_pid, self.client)
        self.queues = 0

    def round(self, pair: int, task_name: str, tasks: int) -> Round:
        """One round of ``tasks`` messages of ``task_name``: its throughput and CPU."""
        self.queues += 1
        queue = self.context.unique(f"{NAME}-{self.queues}")
        publish(self.app, task_name, tasks, queue)
        control = self.app.control
        before = self.meter.seconds()
        control.add_consumer(queue, destination=[self.hostname], reply=False)
        started = wait_until_taken(self.client, queue, tasks)
        finished = wait_until_drained(self.client, queue)
        spent = [
            (now - then) / tasks for now, then in zip(self.meter.seconds(), before, strict=True)
        ]
        control.cancel_consumer(queue, destination=[self.hostname], reply=True, timeout=5)
        return Round(pair, task_name, tasks / (finished - started), *spent)


def run(context: Context) -> BenchResult:
    pairs, tasks = (2, 800) if context.quick else (7, 3000)
    url = context.server.url
    app = client_app(url)
    hostname = f"{context.unique(NAME)}@localhost"
    idle = context.unique(f"{NAME}-idle")
    rounds: list[Round] = []
    admin = context.client()
    evalsha_before = command_stats(admin).get("evalsha", CommandStat(0, 0)).calls
    try:
        with WorkerProcess(
            APP, concurrency=2, queues=[idle], hostname=hostname,
            **worker_options(url, prefix=context.unique(NAME)),
        ) as worker:  # fmt: skip
            runner = _Rounds(context, app, hostname, worker.pid)
            for task_name in (PLAIN, GUARDED):  # warm-up: connections, script load, imports
                runner.round(-1, task_name, min(tasks, WARM_UP))
            for pair in range(pairs):
                order = (PLAIN, GUARDED) if pair % 2 == 0 else (GUARDED, PLAIN)
                rounds += [runner.round(pair, name, tasks) for name in order]
            runner.client.close()
    finally:
        app.close()
    evalsha = command_stats(admin).get("evalsha", CommandStat(0, 0)).calls - evalsha_before
    admin.close()
    guarded_tasks = min(tasks, WARM_UP) + pairs * tasks
    if evalsha < guarded_tasks:  # a guard that did not ask Redis measured nothing
        raise RuntimeError(
            f"{guarded_tasks} guarded tasks sent only {evalsha} EVALSHA: taskguard ran "
            "them on its outage policy; see the worker log"
        )

    def of(pair: int, task: str) -> Round:
        return next(r for r in rounds if r.pair == pair and r.task == task)

    ratios = [of(pair, GUARDED).tasks_per_s / of(pair, PLAIN).tasks_per_s for pair in range(pairs)]
    cpu_ratios = [
        of(pair, PLAIN).cpu_per_task / of(pair, GUARDED).cpu_per_task for pair in range(pairs)
    ]
    plain = median([r.tasks_per_s for r in rounds if r.task == PLAIN])
    guarded = median([r.tasks_per_s for r in rounds if r.task == GUARDED])
    ratio = median(ratios)

    def cpu_us(task: str) -> float:
        return 1e6 * median([r.cpu_per_task for r in rounds if r.task == task])

    rows = [
        Row("guarded ÷ plain (median of pairs)", ratio, "x",
            "pairs: " + ", ".join(f"{r:.3f}" for r in ratios)),
        Row("plain no-op", plain, "tasks/s", f"median of {pairs} rounds of {tasks} tasks"),
        Row('guarded no-op, RateLimit("1000000/s")', guarded, "tasks/s",
            f"median of {pairs} rounds; {evalsha / guarded_tasks:g} EVALSHA per task"),
        Row("plain ÷ guarded CPU per task (median of pairs)", median(cpu_ratios), "x",
            "pairs: " + ", ".join(f"{r:.3f}" for r in cpu_ratios)),
        Row("plain no-op CPU per task", cpu_us(PLAIN), "µs",
            _split(rounds, PLAIN)),
        Row("guarded no-op CPU per task", cpu_us(GUARDED), "µs",
            _split(rounds, GUARDED)),
    ]  # fmt: skip
    goal = Goal(f"ratio ≥ {GOAL}", ratio >= GOAL, ratio)
    details = {
        "tasks_per_round": tasks,
        "evalsha_per_guarded_task": evalsha / guarded_tasks,
        "pair_ratios": ratios,
        "pair_cpu_ratios": cpu_ratios,
        "rounds": [asdict(r) for r in rounds],
    }
    return BenchResult(NAME, TITLE, rows, goal, details)


def _split(rounds: list[Round], task: str) -> str:
    def us(part: str) -> float:
        return 1e6 * median([getattr(r, part) for r in rounds if r.task == task])

    return (
        f"main {us('main_cpu_per_task'):.0f} + pool {us('pool_cpu_per_task'):.0f} "
        f"+ Redis {us('redis_cpu_per_task'):.0f}"
    )
