"""Where a guarded no-op's CPU goes with Sentry and Prometheus on, in one process.

Not part of the suite (no goal): a profile for (b2) (:mod:`benchmarks.observed`) to run
before and after a change to taskguard's instrumentation. It runs the no-op tasks of
:mod:`benchmarks.celeryapp` through Celery's own tracer (``build_tracer``, the call a pool
process makes for each message, without the broker), ``--tasks`` times each, and prints
the CPU time per task (``time.process_time``: this process, the Redis round trip's system
calls included) of the plain and the guarded no-op in four stages, each adding to the
last (tracers are rebuilt per stage, as Sentry's Celery integration wraps them):

1. bare: no Sentry, no metrics;
2. Prometheus: taskguard's metrics in multiprocess mode (as a worker's ``metrics``
   setting turns them on);
3. Prometheus and Sentry: ``sentry_sdk.init`` as :mod:`benchmarks.observing` does (its
   Celery integration and taskguard's, ``traces_sample_rate=1.0``, a transport that
   keeps nothing);
4. Sentry alone: the metrics uninstalled again.

Each stage runs the pair ``--repeat`` times, alternating, and reports the median. The
guard state lives on the Redis at ``--redis-url`` (the local one by default), under a
fresh prefix. ``--profile`` prints cProfile's top functions of the guarded no-op in
stage 3::

    python -m benchmarks.observed_profile --tasks 3000
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

URL = "redis://127.0.0.1:6379/0"

Tracer = Callable[[], None]


def _tracer(app: Any, name: str) -> Tracer:
    import celery.app.trace  # here: Sentry patches build_tracer at init

    task = app.tasks[name]
    trace = celery.app.trace.build_tracer(
        name, task, loader=app.loader, hostname="profile@localhost", app=app
    )

    def call() -> None:
        task_id = uuid.uuid4().hex
        request = {
            "id": task_id,
            "headers": {},
            "delivery_info": {"exchange": "", "routing_key": "celery", "redelivered": False},
            "hostname": "profile@localhost",
            "is_eager": False,
            "retries": 0,
        }
        result = trace(task_id, (), {}, request)
        if result[1] is not None:  # (retval, info, runtime, repr): info set on failure
            raise RuntimeError(f"{name} failed: {result[1]!r}")

    return call


def _per_task(call: Tracer, tasks: int) -> float:
    """CPU µs per call over ``tasks`` calls."""
    started = time.process_time()
    for _ in range(tasks):
        call()
    return 1e6 * (time.process_time() - started) / tasks


def _stage(app: Any, tasks: int, repeat: int) -> tuple[float, float]:
    plain, guarded = _tracer(app, "bench.noop"), _tracer(app, "bench.guarded_noop")
    for call in (plain, guarded):  # warm: connections, script load, first spans
        _per_task(call, 200)
    times: dict[str, list[float]] = {"plain": [], "guarded": []}
    for _ in range(repeat):
        times["plain"].append(_per_task(plain, tasks))
        times["guarded"].append(_per_task(guarded, tasks))
    return statistics.median(times["plain"]), statistics.median(times["guarded"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--redis-url", default=URL)
    parser.add_argument("--profile", action="store_true")
    options = parser.parse_args()
    metrics_dir = tempfile.mkdtemp(prefix="tgprof-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # before prometheus_client loads
    os.environ["TG_BENCH_BROKER_URL"] = options.redis_url
    os.environ["TG_BENCH_PREFIX"] = f"tgprof{uuid.uuid4().hex[:6]}"

    from benchmarks import celeryapp  # here: it reads the environment above
    from benchmarks.observing import observe
    from taskguard.integrations import prometheus

    app = celeryapp.app
    stages: list[tuple[str, float, float]] = []
    stages.append(("bare", *_stage(app, options.tasks, options.repeat)))
    prometheus.install()
    stages.append(("prometheus", *_stage(app, options.tasks, options.repeat)))
    observe(app, prefix=os.environ["TG_BENCH_PREFIX"], counter_url=options.redis_url)
    stages.append(("prometheus + sentry", *_stage(app, options.tasks, options.repeat)))
    if options.profile:
        profiler = cProfile.Profile()
        guarded = _tracer(app, "bench.guarded_noop")
        profiler.runcall(_per_task, guarded, options.tasks)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(35)
    prometheus.uninstall()
    stages.append(("sentry", *_stage(app, options.tasks, options.repeat)))

    print(f"CPU µs per task, median of {options.repeat} x {options.tasks} tasks")
    print(f"{'stage':<22}{'plain':>9}{'guarded':>9}{'added':>9}{'plain÷guarded':>15}")
    for name, plain, guarded in stages:
        print(f"{name:<22}{plain:9.1f}{guarded:9.1f}{guarded - plain:9.1f}{plain / guarded:15.3f}")


if __name__ == "__main__":
    main()
