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

DSN = "postgresql://postgres@127.0.0.1:5432/test"


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _postgres_cpu() -> dict[int, float]:
    found: dict[int, float] = {}
    for process in psutil.process_iter(["name"]):
        try:
            if (process.info["name"] or "").startswith("postgres"):
                found[process.pid] = _cpu(process)
        except psutil.Error:
            continue
    return found


def profile(rows: int, workers: int, dsn: str) -> None:
    """Queue ``rows`` writes, drain them, print the figures."""
    with RedisServer() as server:
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
            client = redis.Redis.from_url(server.url)
            client.config_resetstat()
            pid = client.info("server")["process_id"]
            redis_process, me = psutil.Process(pid), psutil.Process()
            redis0, me0, pg0 = _cpu(redis_process), _cpu(me), _postgres_cpu()
            began = time.perf_counter()
            with DrainPool(backend, store=store, namespaces=["bench"], workers=workers) as pool:
                if not pool.wait_idle(timeout=600):
                    raise RuntimeError("the drain did not finish")
                elapsed = time.perf_counter() - began
            python = _cpu(me) - me0
            redis_cpu = _cpu(redis_process) - redis0
            pg = sum(cpu - pg0.get(pid, 0.0) for pid, cpu in _postgres_cpu().items())
            per = 1e6 / rows
            print(
                f"{rows / elapsed:,.0f} rows/s ({rows:,} rows, {workers} threads, "
                f"{elapsed:.2f} s); CPU us per row: Python {python * per:.2f}, "
                f"Redis {redis_cpu * per:.2f}, PostgreSQL {pg * per:.2f}, "
                f"total {(python + redis_cpu + pg) * per:.2f}"
            )
            stats = client.info("commandstats")
            for name, stat in sorted(stats.items(), key=lambda item: -item[1]["usec"])[:10]:
                print(
                    f"  {name.removeprefix('cmdstat_'):16s} {stat['calls']:8d} calls "
                    f"{stat['usec'] / rows:7.3f} us/row"
                )
            client.close()
        finally:
            store.drop_table()
            store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dsn", default=DSN)
    args = parser.parse_args()
    profile(args.rows, args.workers, args.dsn)


if __name__ == "__main__":
    main()
