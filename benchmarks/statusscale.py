"""``taskguard status`` at scale: how long the status takes with 10k held locks and 1k buckets.

A throwaway Redis server of its own (so no other benchmark's keys are walked) gets
``LOCKS`` locks taken through the real lock path (``client.lock(name).try_acquire()``:
owner, lease and fencing token, as a task's lock) and ``BUCKETS`` rate-limit buckets
(``client.rate_limiter(...).try_acquire(key=...)``, one token spent in each), under one
prefix. Then the status is read ``runs`` times with what ``taskguard status --json``
runs: :func:`taskguard.status.read_status` (one SCAN sweep, pipelined reads) with the
limiter's rate (so each bucket shows its level in tokens), and the JSON document built
and encoded. The goal is on the median of those runs' wall time; the CPU time this
process spent is given too (on a busy machine the wall time grows, the CPU time hardly),
and the load average before the benchmark is in the details. Once, for reference, the CLI itself
is run as a process (``taskguard status --json``), interpreter start-up
and imports included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import taskguard
from taskguard import RateLimit
from taskguard.status import read_status
from taskguard.testing import RedisServer

from .harness import REPO_ROOT, BenchResult, Context, Goal, Row, median

NAME = "statusscale"
TITLE = "taskguard status --json with 10k held locks and 1k rate-limit buckets"

LOCKS = 10_000
BUCKETS = 1_000
GOAL_SECONDS = 1.0
#: A rate under which a spent token takes minutes to come back: the buckets stay.
LIMIT = RateLimit("1/m", burst=5, name="bench-status-rl")


def _fill(client: taskguard.Client) -> None:
    for i in range(LOCKS):
        decision = client.lock(f"bench-lock-{i}", ttl=600, renew=False).try_acquire()
        if not decision.allowed:
            raise RuntimeError(f"lock {i} was not taken")
    limiter = client.rate_limiter(LIMIT.name or "", LIMIT.rate, burst=LIMIT.burst)
    for i in range(BUCKETS):
        if not limiter.try_acquire(key=f"tenant-{i}").allowed:
            raise RuntimeError(f"bucket {i} refused its first token")


def _collect(client: taskguard.Client, url: str) -> tuple[float, float, int, int, int]:
    """One status read as the CLI's --json does it; returns (seconds, CPU seconds of this
    process, locks, buckets, bytes)."""
    started, cpu = time.perf_counter(), time.process_time()
    status = read_status(client, limits=[LIMIT])
    document = {"redis": url, "prefixes": [status.as_dict()], "tasks": {}}
    encoded = json.dumps(document, indent=2)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return seconds, cpu, len(status.locks), len(status.rate_limits), len(encoded)


def _cli_seconds(url: str, prefix: str) -> float:
    env = {**os.environ, "TASKGUARD_REDIS_URL": url, "TASKGUARD_PREFIX": prefix}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", "from taskguard.cli import main; main()", "status", "--json"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        check=True,
        timeout=60,
    )
    seconds = time.perf_counter() - started
    locks = len(json.loads(done.stdout)["prefixes"][0]["locks"])
    if locks != LOCKS:
        raise RuntimeError(f"the CLI saw {locks} locks, not {LOCKS}")
    return seconds


def run(context: Context) -> BenchResult:
    load = os.getloadavg()
    runs = 3 if context.quick else 9
    prefix = context.unique(NAME)
    with RedisServer() as server:
        client = taskguard.connect(server.url, prefix=prefix)
        try:
            began = time.perf_counter()
            _fill(client)
            fill_seconds = time.perf_counter() - began
            _collect(client, server.url)  # warm: scripts, connection
            measured = [_collect(client, server.url) for _ in range(runs)]
            cli = _cli_seconds(server.url, prefix)
        finally:
            client.close()
    times = [m[0] for m in measured]
    cpus = [m[1] for m in measured]
    _, _, locks, buckets, size = measured[-1]
    if (locks, buckets) != (LOCKS, BUCKETS):
        raise RuntimeError(f"status saw {locks} locks and {buckets} buckets")
    typical = median(times)
    rows = [
        Row(
            f"status read + JSON, {LOCKS // 1000}k locks + {BUCKETS // 1000}k buckets",
            typical * 1000,
            "ms",
            f"median of {runs}; min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f} ms; "
            f"{size / 1e6:.1f} MB of JSON; CPU of this process {median(cpus) * 1000:.0f} ms",
            decimals=0,
        ),
        Row(
            "  taskguard status --json, as a process",
            cli * 1000,
            "ms",
            "once; interpreter start-up and imports included",
            decimals=0,
        ),
    ]
    goal = Goal(f"status answers in < {GOAL_SECONDS:g} s (median)", typical < GOAL_SECONDS, typical)
    details = {
        "locks": LOCKS,
        "buckets": BUCKETS,
        "runs_seconds": times,
        "runs_cpu_seconds": cpus,
        "load_average_before": load,
        "json_bytes": size,
        "cli_process_seconds": cli,
        "fill_seconds": fill_seconds,
    }
    return BenchResult(NAME, TITLE, rows, goal, details)
