"""(b2) Overhead with observability on: a guarded no-op with Sentry and Prometheus, next
to a plain no-op on the same worker (issue 13's goal: at least 0.90 of its throughput).

Two ``celery worker`` processes (prefork, ``-c 2``) wait idle: a bare one, and an
observed one with Sentry (its Celery integration and taskguard's, every transaction
sampled, a transport that keeps nothing; :mod:`benchmarks.observing`) and taskguard's
Prometheus endpoint on. Each pair runs four rounds (:mod:`benchmarks.rounds`), in turn
forwards and backwards: the plain and the guarded no-op on each worker. Three ratios, each
the median over pairs:

* observed guarded ÷ observed plain: what taskguard costs a user who runs Sentry and
  Prometheus anyway (the goal: "a plain no-op" is a Celery task without taskguard, on the
  same worker configuration; Sentry's own Celery integration is not taskguard's cost,
  docs/performance.md);
* observed guarded ÷ bare plain: what a user who turns everything on pays against plain
  Celery without Sentry (reported next to it);
* bare guarded ÷ bare plain: (b), in the same run.

The run checks that the observed worker really observed: Sentry's transport was handed at
least one envelope per guarded task and the worker's ``/metrics`` counted every admission.
"""

from __future__ import annotations

import re
import urllib.request
from contextlib import ExitStack
from dataclasses import asdict

from taskguard.testing import WorkerProcess

from .celeryrun import APP, client_app, worker_options
from .harness import BenchResult, Context, Goal, Row, median
from .observing import ENVELOPES_KEY
from .rounds import Round, Rounds, cpu_split

NAME = "observed"
TITLE = "guarded no-op ÷ plain no-op, both with Sentry and Prometheus on, prefork -c2"

PLAIN = "bench.noop"
GUARDED = "bench.guarded_noop"
GOAL = 0.90
WARM_UP = 300
BARE, OBSERVED = "bare", "observed"
ORDER = [(BARE, PLAIN), (OBSERVED, GUARDED), (OBSERVED, PLAIN), (BARE, GUARDED)]
_METRICS_LINE = re.compile(r"taskguard: metrics on (http://\S+/metrics)")


def _admissions(url: str) -> float:
    """``taskguard_admissions_total`` summed over its labels, from a ``/metrics`` page."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("taskguard_admissions_total{")
    )


def run(context: Context) -> BenchResult:
    pairs, tasks = (2, 800) if context.quick else (7, 2000)
    url = context.server.url
    app = client_app(url)
    prefix = context.unique(NAME)
    rounds: list[Round] = []
    with ExitStack() as stack:
        stack.callback(app.close)
        runners: dict[str, Rounds] = {}
        workers: dict[str, WorkerProcess] = {}
        for label in (BARE, OBSERVED):
            options = worker_options(url, prefix=f"{prefix}-{label}")
            if label == OBSERVED:
                options["env"]["TG_BENCH_OBSERVED"] = "1"
            hostname = f"{context.unique(label)}@localhost"
            worker = WorkerProcess(
                APP, concurrency=2, queues=[context.unique(f"{label}-idle")],
                hostname=hostname, **options,
            )  # fmt: skip
            workers[label] = stack.enter_context(worker)
            runners[label] = Rounds(context, app, hostname, worker.pid, label)
            stack.callback(runners[label].close)
        for label, task in ORDER:  # warm-up: connections, script load, imports
            runners[label].round(-1, task, min(tasks, WARM_UP))
        for pair in range(pairs):
            order = ORDER if pair % 2 == 0 else ORDER[::-1]
            rounds += [runners[label].round(pair, task, tasks) for label, task in order]
        found = _METRICS_LINE.search(workers[OBSERVED].log())
        if found is None:
            raise RuntimeError("the observed worker served no /metrics; see its log")
        admissions = _admissions(found.group(1))
    guarded_tasks = min(tasks, WARM_UP) + pairs * tasks
    client = context.client()
    envelopes = int(client.get(ENVELOPES_KEY.format(prefix=f"{prefix}-{OBSERVED}")) or 0)
    client.close()
    # One transaction per task, plain or guarded; each pool process reports its envelopes
    # by the hundred, so up to 99 each may be unreported.
    if envelopes < 2 * guarded_tasks - 2 * 99:
        raise RuntimeError(f"Sentry was handed only {envelopes} envelopes: was it on?")
    if admissions < guarded_tasks:
        raise RuntimeError(f"/metrics counted {admissions:g} admissions of {guarded_tasks}")

    def of(pair: int, label: str, task: str) -> Round:
        return next(r for r in rounds if (r.pair, r.worker, r.task) == (pair, label, task))

    def ratio(top: tuple[str, str], bottom: tuple[str, str]) -> tuple[float, list[float]]:
        each = [of(p, *top).tasks_per_s / of(p, *bottom).tasks_per_s for p in range(pairs)]
        return median(each), each

    def rate(label: str, task: str) -> float:
        return median([r.tasks_per_s for r in rounds if (r.worker, r.task) == (label, task)])

    def cpu(label: str, task: str) -> str:
        chosen = [r for r in rounds if (r.worker, r.task) == (label, task)]
        return f"{rate(label, task):,.0f} tasks/s; CPU per task {cpu_split(chosen)}"

    share, share_pairs = ratio((OBSERVED, GUARDED), (OBSERVED, PLAIN))
    cpu_share = [
        of(p, OBSERVED, PLAIN).cpu_per_task / of(p, OBSERVED, GUARDED).cpu_per_task
        for p in range(pairs)
    ]
    everything, everything_pairs = ratio((OBSERVED, GUARDED), (BARE, PLAIN))
    bare, bare_pairs = ratio((BARE, GUARDED), (BARE, PLAIN))

    def listed(values: list[float]) -> str:
        return "pairs: " + ", ".join(f"{v:.3f}" for v in values)

    rows = [
        Row("observed guarded ÷ observed plain (median of pairs)", share, "x",
            listed(share_pairs)),
        Row("observed plain ÷ observed guarded CPU per task", median(cpu_share), "x",
            listed(cpu_share)),
        Row("observed guarded ÷ bare plain", everything, "x", listed(everything_pairs)),
        Row("bare guarded ÷ bare plain, (b) in this run", bare, "x", listed(bare_pairs)),
        Row("bare plain no-op", rate(BARE, PLAIN), "tasks/s", cpu(BARE, PLAIN)),
        Row("bare guarded no-op", rate(BARE, GUARDED), "tasks/s", cpu(BARE, GUARDED)),
        Row("observed plain no-op", rate(OBSERVED, PLAIN), "tasks/s", cpu(OBSERVED, PLAIN)),
        Row("observed guarded no-op", rate(OBSERVED, GUARDED), "tasks/s",
            cpu(OBSERVED, GUARDED)),
    ]  # fmt: skip
    goal = Goal(f"observed guarded ÷ observed plain ≥ {GOAL}", share >= GOAL, share)
    details = {
        "tasks_per_round": tasks,
        "sentry_envelopes_reported": envelopes,
        "metrics_admissions": admissions,
        "rounds": [asdict(r) for r in rounds],
    }
    return BenchResult(NAME, TITLE, rows, goal, details)
