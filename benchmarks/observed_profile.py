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

Each stage runs the pair ``--repeat`` times, alternating, and reports the least of each
(on a shared machine other processes only ever add to a reading). The guard state lives
on the Redis at ``--redis-url`` (the local one by default), under a fresh prefix.
``--profile`` prints cProfile's top functions of the guarded no-op in stage 3::

    python -m benchmarks.observed_profile --tasks 3000

``--before DIR`` compares taskguard's hooks with those of another commit instead, in one
process: ``DIR`` holds that commit's ``taskguard`` package (``git archive <commit>
taskguard | tar -x -C DIR``), whose ``integrations/sentry.py`` and ``prometheus.py`` hooks
are swapped in between batches, alternating with this tree's and with none, Sentry on
throughout; the least of the repeats per variant, and its tax over no hooks::

    python -m benchmarks.observed_profile --before /tmp/before --tasks 300 --repeat 20
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
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
    # The least of the repeats: what other processes take from this one only adds.
    return min(times["plain"]), min(times["guarded"])


def _load(name: str, path: str) -> Any:
    import importlib.util  # here: only the A/B needs it
    import sys

    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _ab(app: Any, before: str, tasks: int, repeat: int) -> None:
    """Hooks of the tree in ``before`` against this tree's and none, alternating."""
    from sentry_sdk import scope as sentry_scope

    from taskguard import _instrument
    from taskguard.integrations import sentry as new_sentry

    old_sentry = _load(
        "taskguard.integrations._sentry_before", f"{before}/taskguard/integrations/sentry.py"
    )
    old_prometheus = _load(
        "taskguard.integrations._prometheus_before",
        f"{before}/taskguard/integrations/prometheus.py",
    )
    old_sentry.TaskguardIntegration = new_sentry.TaskguardIntegration  # the client's
    processor = getattr(new_sentry, "_errors_only_context", None)
    variants: dict[str, tuple[tuple[Any, ...], bool]] = {
        "no hooks": ((), False),
        "before": ((old_prometheus.Metrics(None), old_sentry._HOOK), False),
        "after": (_instrument.hooks(), True),
    }

    def use(hooks: tuple[Any, ...], with_processor: bool) -> None:
        _instrument._hooks, _instrument.on = hooks, bool(hooks)
        found = sentry_scope.global_event_processors
        if processor in found and not with_processor:
            found.remove(processor)
        elif processor is not None and processor not in found and with_processor:
            found.append(processor)

    plain, guarded = _tracer(app, "bench.noop"), _tracer(app, "bench.guarded_noop")
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in variants}
    for _ in range(repeat):
        for name, variant in variants.items():
            use(*variant)
            times[name][0].append(_per_task(plain, tasks))
            times[name][1].append(_per_task(guarded, tasks))
    use(*variants["after"])
    base = min(times["no hooks"][1])
    print(f"CPU µs per task, least of {repeat} x {tasks} tasks, Sentry and Prometheus on")
    for name, (plains, guardeds) in times.items():
        print(
            f"{name:<10} plain {min(plains):8.1f}  guarded {min(guardeds):8.1f}  "
            f"hooks' tax {min(guardeds) - base:7.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--redis-url", default=URL)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--before", metavar="DIR", help="A/B the hooks of the tree in DIR")
    options = parser.parse_args()
    metrics_dir = tempfile.mkdtemp(prefix="tgprof-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # before prometheus_client loads
    os.environ["TG_BENCH_BROKER_URL"] = options.redis_url
    os.environ["TG_BENCH_PREFIX"] = f"tgprof{uuid.uuid4().hex[:6]}"

    from benchmarks import celeryapp  # here: it reads the environment above
    from benchmarks.observing import observe
    from taskguard.integrations import prometheus

    app = celeryapp.app
    if options.before:
        prometheus.install()
        observe(app, prefix=os.environ["TG_BENCH_PREFIX"], counter_url=options.redis_url)
        _ab(app, options.before, options.tasks, options.repeat)
        return
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

    print(f"CPU µs per task, least of {options.repeat} x {options.tasks} tasks")
    print(f"{'stage':<22}{'plain':>9}{'guarded':>9}{'added':>9}{'plain÷guarded':>15}")
    for name, plain, guarded in stages:
        print(f"{name:<22}{plain:9.1f}{guarded:9.1f}{guarded - plain:9.1f}{plain / guarded:15.3f}")


if __name__ == "__main__":
    main()
