"""(r) Drain rows/s with the write-behind queue on a 3-master cluster ÷ on one server.

Issue 14's goal: the drain on Redis Cluster keeps up with one server (at least 1.0x), its
partitions spread over the slots and each pool reading per node. Per round, a backlog of
distinct keys is queued through the public write-behind cache with no drain running, then
a :class:`~taskguard.drain.DrainPool` (2 threads, as in the write-behind benchmark) drains
it into PostgreSQL; a round's rate is rows ÷ the time from the pool's start to its last
batch written and acknowledged (each batch's ``drain_batch_written`` signal, sent after
both), and a sample of the rows is read back from the store. The rate to the pool seen
idle (``wait_idle``: a discovery sweep, then the metrics of every partition) is reported
next to it. ``wait_idle`` is called once the signals have counted every record, so its
round trips (more on a cluster) do not take the GIL from the drain threads meanwhile.
Rounds alternate between the run's throwaway server and a 3-master cluster (and one with
a replica per master, :class:`taskguard.testing.topologies.RedisCluster`), so all see the
same background load; the headline is the median of the per-pair ratios. Each pool runs
with the heap as ``taskguard drain`` has it (:func:`benchmarks.writebehind.cli_heap`).

The headline cluster has no replicas, like the one server it is compared with: on this
2-core machine a replica per master puts three more Redis processes, each applying every
write and acknowledgement, on the same two cores. The cluster with one replica per
master (the test fixture's shape) is measured in the same rounds and reported next to it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import taskguard
from taskguard import signals
from taskguard.drain import DrainPool
from taskguard.sinks.sql import SQLStore
from taskguard.testing.topologies import RedisCluster

from .harness import BenchResult, Context, Goal, Row, median
from .writebehind import _fill, _postgres, cli_heap

NAME = "clusterdrain"
TITLE = "write-behind drain rows/s into PostgreSQL: queue on a 3-master cluster ÷ on one server"
GOAL = 1.0


def _drain_round(
    context: Context, url: str, dsn: str, rows: int, label: str
) -> tuple[float, float]:
    """Rows/s to the last batch written and acknowledged, and to the pool seen idle."""
    prefix = context.unique(f"{NAME}-{label}")
    store = SQLStore(dsn, table=prefix.replace("-", "_"))
    store.create_table()
    client = taskguard.connect(url, prefix=prefix)
    written: list[float] = []
    records = [0]
    all_written = threading.Event()

    def note(sender: Any = None, **kwargs: Any) -> None:
        written.append(time.perf_counter())
        records[0] += kwargs["records"]
        if records[0] >= rows:
            all_written.set()

    signals.drain_batch_written.connect(note, weak=False)
    try:
        cache = client.cache("bench", strategy="write-behind", ttl=600, store=store)
        _fill(cache, rows, "k")
        pool = DrainPool(client.backend, store=store, namespaces=["bench"], workers=2)
        with cli_heap():  # frozen before the clock starts, as the CLI does before start()
            began = time.perf_counter()
            with pool:
                # Polled only once every record is written, so the poll's round trips
                # (more on a cluster) do not share the drain's GIL meanwhile.
                all_written.wait(timeout=600)
                if not pool.wait_idle(timeout=600):
                    raise RuntimeError(f"the drain pool on {label} did not finish")
                idle = time.perf_counter() - began
        sample = [f"k{i}" for i in range(0, rows, max(1, rows // 500))]
        if len(store.load_many("bench", sample)) != len(sample):
            raise RuntimeError(f"rows are missing from the store after the drain on {label}")
        return rows / (max(written) - began), rows / idle
    finally:
        signals.drain_batch_written.disconnect(note)
        client.close()
        store.drop_table()
        store.close()


def run(context: Context) -> BenchResult:
    pairs, rows = (2, 5_000) if context.quick else (15, 60_000)
    labels = ("one server", "cluster", "cluster+replicas")
    rates: dict[str, list[float]] = {label: [] for label in labels}
    ratios: dict[str, list[float]] = {"cluster": [], "cluster+replicas": []}
    to_idle: dict[str, list[float]] = {"cluster": [], "cluster+replicas": []}
    with (
        _postgres() as dsn,
        RedisCluster(replicas=0) as bare,
        RedisCluster(replicas=1) as replicated,
    ):
        urls = dict(zip(labels, (context.server.url, bare.url, replicated.url), strict=True))
        for pair in range(pairs):
            order = list(urls) if pair % 2 == 0 else list(reversed(urls))
            found: dict[str, tuple[float, float]] = {}
            for n, label in enumerate(order):
                found[label] = _drain_round(context, urls[label], dsn, rows, f"{pair}-{n}")
                rates[label].append(found[label][0])
            for label, listed in ratios.items():
                listed.append(found[label][0] / found["one server"][0])
                to_idle[label].append(found[label][1] / found["one server"][1])
    ratio = median(ratios["cluster"])
    with_replicas = median(ratios["cluster+replicas"])

    def pairs_of(label: str, found: dict[str, list[float]] = ratios) -> str:
        return "pairs " + " ".join(f"{r:.3f}" for r in found[label])

    rows_out = [
        Row("drain rows/s: cluster ÷ one server", ratio, "x", pairs_of("cluster")),
        Row("with a replica per master ÷ one server", with_replicas, "x",
            pairs_of("cluster+replicas")),
        Row("to the pool seen idle: cluster ÷ one server", median(to_idle["cluster"]), "x",
            pairs_of("cluster", to_idle)),
        Row("queue on one server", median(rates["one server"]), "rows/s", f"{rows:,} rows a round"),
        Row("queue on the cluster (3 masters)", median(rates["cluster"]), "rows/s"),
        Row("queue on the cluster (3 masters, 1 replica each)", median(rates["cluster+replicas"]),
            "rows/s"),
    ]  # fmt: skip
    details: dict[str, Any] = {"ratios": ratios, "to_idle": to_idle, "rates": rates, "rows": rows}
    goal = Goal(f"drain rows/s on the cluster >= {GOAL}x one server", ratio >= GOAL, ratio)
    return BenchResult(NAME, TITLE, rows_out, goal, details=details)
