"""What every benchmark shares: the run context, results, timing and server counters."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
import uuid
from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import redis

from taskguard.testing import RedisServer

__all__ = [
    "REPO_ROOT",
    "BenchResult",
    "Context",
    "Goal",
    "Row",
    "calls_per_second",
    "interleaved_call_times",
    "machine_info",
    "median",
]

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Row:
    """One line of the results table.

    Attributes:
        label: What was measured.
        value: The figure.
        unit: Its unit (``"tasks/s"``, ``"x"``, ``"cmd/task"``...).
        note: Context shown after the figure (ratios, spreads, references).
        decimals: Digits after the point in the table (default: by magnitude).
    """

    label: str
    value: float
    unit: str
    note: str = ""
    decimals: int | None = None


@dataclass(frozen=True)
class Goal:
    """The project's target for a benchmark and whether this run met it.

    Attributes:
        description: The target in words, e.g. ``"within ±2% of 20/s"``.
        met: Whether the measured figure meets it.
        measured: The figure compared with the target.
    """

    description: str
    met: bool
    measured: float


@dataclass
class BenchResult:
    """Everything one benchmark measured.

    Attributes:
        name: The benchmark's ``--only`` name.
        title: One line saying what it measures.
        rows: The table lines, headline figure first.
        goal: The target, when the project set one.
        details: Raw figures (per round, per command...) for the JSON file.
        seconds: Wall-clock time the benchmark took.
    """

    name: str
    title: str
    rows: list[Row]
    goal: Goal | None = None
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Context:
    """Shared by the benchmarks of one run.

    Attributes:
        quick: Short durations: a smoke run whose figures are not meaningful.
        server: A throwaway Redis server for brokers, guard state and recordings;
            nothing else uses it, so its counters and queues are ours alone.
        run_id: Unique per run; every key prefix and queue name includes it.
    """

    quick: bool
    server: RedisServer
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def unique(self, what: str) -> str:
        """A name no other run (and no other benchmark of this run) uses."""
        return f"tgbench-{self.run_id}-{what}"

    def client(self) -> redis.Redis:
        """A new client for :attr:`server`."""
        return redis.Redis.from_url(self.server.url)


def interleaved_call_times(
    calls: Sequence[Callable[[], object]], seconds: float
) -> list[array[float]]:
    """Call each of ``calls`` in turn, timing every call, for about ``seconds``.

    Returns:
        For each call, its durations in nanoseconds.
    """
    clock = time.perf_counter_ns
    times = [array("d") for _ in calls]
    deadline = clock() + seconds * 1e9
    while clock() < deadline:
        for _ in range(20):
            for call, durations in zip(calls, times, strict=True):
                started = clock()
                call()
                durations.append(clock() - started)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def calls_per_second(call: Callable[[], object], seconds: float, batch: int = 100) -> float:
    """Call ``call`` back to back for about ``seconds``; return the calls per second.

    The clock is read once per ``batch`` calls so that timing costs nothing measurable.
    """
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            call()
        calls += batch
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - start)


def _version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def machine_info(client: redis.Redis) -> dict[str, Any]:
    """What the figures depend on: cores, Python, Redis, library versions, the source tree."""
    server = client.info("server")
    changed = _git("status", "--porcelain", "--", "taskguard")
    return {
        "commit": _git("rev-parse", "--short", "HEAD"),
        "taskguard_modified_since_commit": bool(changed) if changed is not None else None,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "redis_server": server.get("redis_version"),
        "packages": {
            name: _version(name)
            for name in (
                "celery-taskguard",
                "celery",
                "kombu",
                "redis",
                "hiredis",
                "limits",
                "python-redis-lock",
                "pottery",
                "dramatiq",
            )
        },
    }
