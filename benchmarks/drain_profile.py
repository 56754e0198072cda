"""Where the drain's CPU goes, per row: this process (Python), redis-server, PostgreSQL.

Not part of the suite (no goal): a profile to run before and after a change to the drain.
It queues ``--rows`` distinct keys through the public write-behind cache (``set_many`` of
500, as ``writebehind.py`` does) on a throwaway Redis, then drains them with a
``DrainPool`` (``--workers`` threads) into the local PostgreSQL, and prints rows/s, the CPU
seconds per row of each process family (this Python process, the Redis server, every
``postgres`` process of the machine: run it on a quiet machine), and Redis's
``INFO commandstats`` per row (microseconds inside each command, nested script calls
included)::

    python -m benchmarks.drain_profile --rows 200000
    python -m benchmarks.drain_profile --rows 200000 --cluster   # queue on 3 masters

With ``--cluster`` the queue lives on a throwaway 3-master Redis Cluster (no replicas);
"Redis" is then the three masters' CPU, and the command counts are summed over them.
"""

from __future__ import annotations

import argparse
import time
import uuid

import psutil
import redis

import taskguard
from taskguard.drain import DrainPool
from taskguard.sinks.sql import SQLStore
from taskguard.testing import RedisServer
from taskguard.testing.topologies import RedisCluster

DSN = "postgresql://postgres@127.0.0.1:5432/test"


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _redis_cpu(processes: list[psutil.Process]) -> float:
    return sum(_cpu(process) for process in processes)


def _postgres_cpu() -> dict[int, float]:
    found: dict[int, float] = {}
    for process in psutil.process_iter(["name"]):
        try:
            if (process.info["name"] or "").startswith("postgres"):
                found[process.pid] = _cpu(process)
        except psutil.Error:
            continue
    return found


def profile(rows: int, workers: int, dsn: str, cluster: bool = False) -> None:
    """Queue ``rows`` writes, drain them, print the figures."""
    with RedisCluster(replicas=0) if cluster else RedisServer() as server:
        nodes = (
            [redis.Redis(port=port) for port in server.master_ports()]
            if cluster
            else [redis.Redis.from_url(server.url)]
        )
        prefix = f"tgprof{uuid.uuid4().hex[:6]}"
        store = SQLStore(dsn, table=prefix)
        store.create_table()
        try:
            backend = taskguard.connect(server.url, prefix=prefix)
            cache = backend.cache("bench", strategy="write-behind", ttl=600, store=store)
            for start in range(0, rows, 500):
                cache.set_many(
                    {f"k{i}": {"n": i, "pad": "x" * 32} for i in range(start, start + 500)}
                )
            for node in nodes:
                node.config_resetstat()
            redis_processes = [psutil.Process(n.info("server")["process_id"]) for n in nodes]
            me = psutil.Process()
            redis0, me0, pg0 = _redis_cpu(redis_processes), _cpu(me), _postgres_cpu()
            began = time.perf_counter()
            with DrainPool(backend, store=store, namespaces=["bench"], workers=workers) as pool:
                if not pool.wait_idle(timeout=600):
                    raise RuntimeError("the drain did not finish")
                elapsed = time.perf_counter() - began
            python = _cpu(me) - me0
            redis_cpu = _redis_cpu(redis_processes) - redis0
            pg = sum(cpu - pg0.get(pid, 0.0) for pid, cpu in _postgres_cpu().items())
            per = 1e6 / rows
            print(
                f"{rows / elapsed:,.0f} rows/s ({rows:,} rows, {workers} threads, "
                f"{elapsed:.2f} s); CPU us per row: Python {python * per:.2f}, "
                f"Redis {redis_cpu * per:.2f}, PostgreSQL {pg * per:.2f}, "
                f"total {(python + redis_cpu + pg) * per:.2f}"
            )
            stats: dict[str, dict[str, float]] = {}
            for node in nodes:
                for name, stat in node.info("commandstats").items():
                    found = stats.setdefault(name, {"calls": 0, "usec": 0})
                    found["calls"] += stat["calls"]
                    found["usec"] += stat["usec"]
                node.close()
            for name, stat in sorted(stats.items(), key=lambda item: -item[1]["usec"])[:10]:
                print(
                    f"  {name.removeprefix('cmdstat_'):16s} {stat['calls']:8.0f} calls "
                    f"{stat['usec'] / rows:7.3f} us/row"
                )
        finally:
            store.drop_table()
            store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dsn", default=DSN)
    parser.add_argument("--cluster", action="store_true", help="queue on a 3-master cluster")
    args = parser.parse_args()
    profile(args.rows, args.workers, args.dsn, cluster=args.cluster)


if __name__ == "__main__":
    main()
