"""Write-behind: drain throughput into PostgreSQL, the ratio to write-through, lag, RSS.

Four figures, each with the issue's goal, all on the run's throwaway Redis and one
PostgreSQL database (``$TASKGUARD_BENCH_POSTGRES_DSN``, else the local server at
``postgresql://postgres@127.0.0.1:5432/test`` when it answers, else a throwaway cluster):

* **drain**: a backlog of distinct keys is queued through the public write-behind cache
  with no drain running; then a :class:`~taskguard.drain.DrainPool` (2 threads) starts and
  the clock runs until every partition is empty. Rows per second = rows / that time. The
  pool runs with the heap as ``taskguard drain`` has it (:func:`cli_heap`).
* **vs write-through**: the same rows written one ``cache.set`` at a time by a
  write-through cache (a committed upsert, then a cache ``SET``). Ratio = drain rows/s
  over write-through rows/s.
* **lag**: a writer process offers 10k writes/s for a while; the drain pool runs here with
  its store wrapped to note, right after each commit returns, ``now - write time`` for
  every record in the batch (the write time is the version's millisecond, from Redis
  ``TIME`` on this same host). p50 and p99 over all writes.
* **RSS**: a 1M-record backlog drained by ``taskguard drain`` in its own process, its
  resident set sampled every 50 ms; the peak is reported.
"""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

import taskguard
from taskguard.backend.redis import require_redis
from taskguard.drain import DrainPool, freeze_heap
from taskguard.drain import metrics as drain_metrics
from taskguard.sinks.base import Loaded, Record
from taskguard.sinks.sql import SQLStore
from taskguard.testing import PostgresServer
from taskguard.testing.servers import postgres_available

from .harness import REPO_ROOT, BenchResult, Context, Goal, Row

NAME = "writebehind"
TITLE = "write-behind drain into PostgreSQL: rows/s, vs write-through, lag, peak RSS"

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
THROUGHPUT_GOAL = 100_000.0
RATIO_GOAL = 10.0
LAG_GOAL = 1.0
RSS_GOAL_MB = 150.0
OFFERED = 10_000
CHUNK = 500


@contextlib.contextmanager
def _postgres() -> Iterator[str]:
    dsn = os.environ.get("TASKGUARD_BENCH_POSTGRES_DSN")
    if dsn:
        yield dsn
    elif postgres_available(LOCAL_POSTGRES):
        yield LOCAL_POSTGRES
    else:
        with PostgresServer() as server:
            yield server.dsn


@contextlib.contextmanager
def cli_heap() -> Iterator[None]:
    """The process's heap as ``taskguard drain`` has it when its pool starts: everything
    alive now frozen (:func:`taskguard.drain.freeze_heap`); unfrozen afterwards. Without
    it, this process's larger heap (every benchmark's imports) makes each collection of
    the oldest generation while a pool drains stop its threads for up to 77 ms (48-152
    ms per 60,000 records): a cost the drain CLI does not pay."""
    freeze_heap()
    try:
        yield
    finally:
        gc.unfreeze()


def _fill(cache: Any, count: int, tag: str) -> None:
    """Queue ``count`` writes of distinct keys through the public API."""
    for start in range(0, count, CHUNK):
        cache.set_many(
            {f"{tag}{i}": {"n": i, "pad": "x" * 32} for i in range(start, start + CHUNK)}
        )


def _wait_drained(backend: taskguard.Backend, namespace: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while True:
        found = drain_metrics(require_redis(backend, "benchmark"), namespace)
        if found.backlog == 0 and found.pending == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"not drained after {timeout:.0f}s: {found}")
        time.sleep(0.01)


@dataclass
class _Run:
    """One measurement's own key prefix, backend and store table (dropped afterwards)."""

    prefix: str
    table: str
    backend: taskguard.Backend
    store: SQLStore


@contextlib.contextmanager
def _run(context: Context, dsn: str, what: str) -> Iterator[_Run]:
    prefix = context.unique(what)
    table = prefix.replace("-", "_")
    store = SQLStore(dsn, table=table)
    store.create_table()
    try:
        yield _Run(prefix, table, taskguard.connect(context.server.url, prefix=prefix), store)
    finally:
        store.drop_table()
        store.close()


def _throughput(context: Context, dsn: str, rows: int) -> tuple[float, dict[str, Any]]:
    with _run(context, dsn, "drain") as run:
        backend, store = run.backend, run.store
        cache = taskguard.connect(backend).cache(
            "bench", strategy="write-behind", ttl=600, store=store
        )
        _fill(cache, rows, "k")
        with cli_heap(), DrainPool(backend, store=store, namespaces=["bench"], workers=2) as pool:
            began = time.perf_counter()
            if not pool.wait_idle(timeout=600):
                raise RuntimeError("the drain pool did not finish")
            elapsed = time.perf_counter() - began
            found = pool.metrics()
        stored = store.load_many("bench", [f"k{i}" for i in range(0, rows, max(1, rows // 1000))])
        if len(stored) != len(range(0, rows, max(1, rows // 1000))):
            raise RuntimeError("rows are missing from the store after the drain")
        return rows / elapsed, {"rows": rows, "seconds": elapsed, "metrics": repr(found)}


def _write_through(context: Context, dsn: str, seconds: float) -> float:
    with _run(context, dsn, "wt") as run:
        cache = taskguard.connect(run.backend).cache(
            "bench", strategy="write-through", ttl=600, store=run.store
        )
        count = 0
        began = time.perf_counter()
        while time.perf_counter() - began < seconds:
            cache.set(f"k{count}", {"n": count, "pad": "x" * 32})
            count += 1
        return count / (time.perf_counter() - began)


class _TimedStore:
    """A store that notes, after each commit, how long ago every record was written."""

    def __init__(self, store: SQLStore) -> None:
        self.store = store
        self.lags: list[float] = []

    def write(self, namespace: str, records: Sequence[Record]) -> None:
        self.store.write(namespace, records)
        now_ms = time.time() * 1000
        self.lags.extend((now_ms - r.version / 1_000_000) / 1000 for r in records)

    def load(self, namespace: str, key: str) -> Loaded | None:
        return self.store.load(namespace, key)

    def load_many(self, namespace: str, keys: Sequence[str]) -> Mapping[str, Loaded]:
        return self.store.load_many(namespace, keys)

    def close(self) -> None:
        self.store.close()


_WRITER = """
import sys, time, taskguard
from taskguard.sinks.sql import SQLStore
url, prefix, dsn, table, rate, seconds = sys.argv[1:7]
rate, seconds = int(rate), float(seconds)
cache = taskguard.connect(url, prefix=prefix).cache(
    "bench", strategy="write-behind", ttl=600, store=SQLStore(dsn, table=table, create=False))
tick, per_tick = 0.01, max(1, int(rate * 0.01))
began = time.perf_counter()
n = 0
while time.perf_counter() - began < seconds:
    cache.set_many({f"lag{n + i}": {"n": n + i} for i in range(per_tick)})
    n += per_tick
    time.sleep(max(0.0, began + (n / rate) - time.perf_counter()))
print(n / (time.perf_counter() - began))
"""


def _lag(context: Context, dsn: str, seconds: float) -> tuple[list[float], float]:
    with _run(context, dsn, "lag") as run:
        backend, store, prefix, table = run.backend, run.store, run.prefix, run.table
        timed = _TimedStore(store)
        taskguard.connect(backend).cache(
            "bench", strategy="write-behind", ttl=600, store=store
        )  # registers it
        with DrainPool(backend, store=timed, namespaces=["bench"], workers=2) as pool:
            writer = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _WRITER,
                    context.server.url,
                    prefix,
                    dsn,
                    table,
                    str(OFFERED),
                    str(seconds),
                ],
                capture_output=True,
                text=True,
                check=True,
                cwd=REPO_ROOT,
            )
            pool.wait_idle(timeout=120)
        return timed.lags, float(writer.stdout.split()[-1])


def _rss(context: Context, dsn: str, records: int) -> tuple[float, float]:
    with _run(context, dsn, "rss") as run:
        backend, store, prefix, table = run.backend, run.store, run.prefix, run.table
        cache = taskguard.connect(backend).cache(
            "bench", strategy="write-behind", ttl=600, store=store
        )
        _fill(cache, records, "r")
        drain = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("taskguard")),
                "drain",
                "--redis-url",
                context.server.url,
                "--prefix",
                prefix,
                "--store",
                dsn,
                "--table",
                table,
                "--namespace",
                "bench",
                "--workers",
                "2",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=REPO_ROOT,
        )
        process = psutil.Process(drain.pid)
        peak = 0
        began = time.perf_counter()
        try:
            while True:
                with contextlib.suppress(psutil.Error):
                    peak = max(peak, process.memory_info().rss)
                found = drain_metrics(require_redis(backend, "benchmark"), "bench")
                if found.backlog == 0 and found.pending == 0:
                    break
                if drain.poll() is not None:
                    raise RuntimeError(f"taskguard drain exited with {drain.returncode}")
                time.sleep(0.05)
            elapsed = time.perf_counter() - began
        finally:
            drain.terminate()
            drain.wait(60)
        return peak / 2**20, records / elapsed


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(context: Context) -> list[BenchResult]:
    quick = context.quick
    rows = 20_000 if quick else 200_000
    with _postgres() as dsn:
        rounds = [_throughput(context, dsn, rows) for _ in range(1 if quick else 3)]
        best = max(r[0] for r in rounds)
        median_rate = statistics.median(r[0] for r in rounds)
        write_through = _write_through(context, dsn, 1.0 if quick else 5.0)
        lags, offered = _lag(context, dsn, 3.0 if quick else 10.0)
        peak_mb, rss_rate = _rss(context, dsn, 100_000 if quick else 1_000_000)
    ratio = median_rate / write_through
    p50, p99 = _percentile(lags, 0.50), _percentile(lags, 0.99)
    throughput = BenchResult(
        name="drain",
        title="drain pool rows/s into PostgreSQL (2 threads, backlog of distinct keys)",
        rows=[
            Row(
                "drain rows/s, median of rounds",
                median_rate,
                "rows/s",
                f"best {best:,.0f}; {rows:,} rows per round",
            ),
        ],
        goal=Goal(f">= {THROUGHPUT_GOAL:,.0f} rows/s", median_rate >= THROUGHPUT_GOAL, median_rate),
        details={"rounds": [r[1] for r in rounds]},
    )
    versus = BenchResult(
        name="drainratio",
        title="drain rows/s over per-row write-through rows/s",
        rows=[
            Row("write-through cache.set, one row per call", write_through, "rows/s"),
            Row("drain / write-through", ratio, "x"),
        ],
        goal=Goal(f">= {RATIO_GOAL:g}x", ratio >= RATIO_GOAL, ratio),
    )
    lag = BenchResult(
        name="drainlag",
        title=f"write-to-visible lag at {OFFERED:,} writes/s offered",
        rows=[
            Row("writes/s achieved by the writer", offered, "writes/s"),
            Row("lag p50", p50 * 1000, "ms"),
            Row(
                "lag p99", p99 * 1000, "ms", f"max {max(lags) * 1000:,.0f} ms; {len(lags):,} writes"
            ),
        ],
        goal=Goal(f"p99 < {LAG_GOAL:g} s", p99 < LAG_GOAL, p99),
    )
    rss = BenchResult(
        name="drainrss",
        title="peak RSS of `taskguard drain` with a backlog of 1M records",
        rows=[
            Row("peak RSS", peak_mb, "MB"),
            Row("its drain rate", rss_rate, "rows/s", "standalone process, 2 threads"),
        ],
        goal=Goal(f"< {RSS_GOAL_MB:g} MB", peak_mb < RSS_GOAL_MB, peak_mb),
    )
    return [throughput, versus, lag, rss]
