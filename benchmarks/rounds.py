"""Rounds of no-op tasks on idle workers: the machinery of (b) and of its observed twin.

A round pre-fills a fresh queue with ``tasks`` messages, then tells one idle worker to
consume it (``add_consumer``). Its throughput is ``tasks`` divided by the time from the
first message taken to the queue being empty with every message acknowledged. Each round
also counts the CPU it cost per task: the worker's main process, its pool processes and
the Redis server (wall-clock throughput on a shared 2-core machine swings by a third
between identical rounds; CPU per task much less).
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil
import redis
from celery import Celery

from .celeryrun import publish, wait_until_drained, wait_until_taken
from .harness import Context, median

__all__ = ["Round", "Rounds", "cpu_split"]


@dataclass(frozen=True)
class Round:
    """One round: which pair, worker and task, its throughput and its CPU per task."""

    pair: int
    worker: str
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


class Rounds:
    """Runs rounds on one idle worker (``label`` names it in each :class:`Round`)."""

    def __init__(
        self, context: Context, app: Celery, hostname: str, worker_pid: int, label: str
    ) -> None:
        self.context = context
        self.app = app
        self.client = context.client()
        self.hostname = hostname
        self.label = label
        self.meter = _CpuMeter(worker_pid, self.client)
        self.queues = 0

    def round(self, pair: int, task_name: str, tasks: int) -> Round:
        """One round of ``tasks`` messages of ``task_name``: its throughput and CPU."""
        self.queues += 1
        queue = self.context.unique(f"{self.label}-{self.queues}")
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
        return Round(pair, self.label, task_name, tasks / (finished - started), *spent)

    def close(self) -> None:
        self.client.close()


def cpu_split(rounds: list[Round]) -> str:
    """The median CPU per task of ``rounds``, by part, in µs."""

    def us(part: str) -> float:
        return 1e6 * median([getattr(r, part) for r in rounds])

    return (
        f"main {us('main_cpu_per_task'):.0f} + pool {us('pool_cpu_per_task'):.0f} "
        f"+ Redis {us('redis_cpu_per_task'):.0f} µs"
    )
