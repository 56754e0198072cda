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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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


class _Rounds:
    """Runs rounds on one idle worker, each on a fresh queue."""

    def __init__(self, context: Context, app: Celery, hostname: str) -> None:
        self.context = context
        self.app = app
        self.client = context.client()
        self.hostname = hostname
        self.queues = 0

    def throughput(self, task_name: str, tasks: int) -> float:
        """Tasks per second for one round of ``tasks`` messages of ``task_name``."""
        self.queues += 1
        queue = self.context.unique(f"{NAME}-{self.queues}")
        publish(self.app, task_name, tasks, queue)
        control = self.app.control
        control.add_consumer(queue, destination=[self.hostname], reply=False)
        started = wait_until_taken(self.client, queue, tasks)
        finished = wait_until_drained(self.client, queue)
        control.cancel_consumer(queue, destination=[self.hostname], reply=True, timeout=5)
        return tasks / (finished - started)


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
        ):  # fmt: skip
            runner = _Rounds(context, app, hostname)
            for task_name in (PLAIN, GUARDED):  # warm-up: connections, script load, imports
                runner.throughput(task_name, min(tasks, WARM_UP))
            for pair in range(pairs):
                order = (PLAIN, GUARDED) if pair % 2 == 0 else (GUARDED, PLAIN)
                rounds += [Round(pair, name, runner.throughput(name, tasks)) for name in order]
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

    def rate(pair: int, task: str) -> float:
        return next(r.tasks_per_s for r in rounds if r.pair == pair and r.task == task)

    ratios = [rate(pair, GUARDED) / rate(pair, PLAIN) for pair in range(pairs)]
    plain = median([r.tasks_per_s for r in rounds if r.task == PLAIN])
    guarded = median([r.tasks_per_s for r in rounds if r.task == GUARDED])
    ratio = median(ratios)
    rows = [
        Row("guarded ÷ plain (median of pairs)", ratio, "x",
            "pairs: " + ", ".join(f"{r:.3f}" for r in ratios)),
        Row("plain no-op", plain, "tasks/s", f"median of {pairs} rounds of {tasks} tasks"),
        Row('guarded no-op, RateLimit("1000000/s")', guarded, "tasks/s",
            f"median of {pairs} rounds; {evalsha / guarded_tasks:g} EVALSHA per task"),
    ]  # fmt: skip
    goal = Goal(f"ratio ≥ {GOAL}", ratio >= GOAL, ratio)
    details = {
        "tasks_per_round": tasks,
        "evalsha_per_guarded_task": evalsha / guarded_tasks,
        "pair_ratios": ratios,
        "rounds": [asdict(r) for r in rounds],
    }
    return BenchResult(NAME, TITLE, rows, goal, details)
