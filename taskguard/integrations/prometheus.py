"""Prometheus: taskguard's metrics, and the endpoint that serves them.

A worker serves them when its ``metrics`` setting has a port (docs/observability.md),
``taskguard drain`` with ``--metrics-port``; in any other process::

    from taskguard.integrations import prometheus

    prometheus.install()             # count into prometheus_client's default registry
    prometheus.serve(9808, backend)  # optional: /metrics, with the write-behind gauges

Names follow Prometheus' conventions: a ``taskguard_`` prefix, base units, ``_total`` on
counters, and low-cardinality labels only (task, guard, result, reason, breaker,
namespace); a bucket key is never a label. ``guard`` is ``<kind>:<name>``.

================================================  =======================================
metric                                            what
================================================  =======================================
``taskguard_admissions_total{task,guard,result}`` admission decisions: ``allowed`` and
                                                  ``degraded`` (outage policy) count each
                                                  guard of the task; ``deferred`` and
                                                  ``denied`` (skipped, failed, duplicate)
                                                  the guard that refused;
                                                  ``shadow_denied`` a guard in shadow
                                                  mode that would have refused
``taskguard_deferrals_total{task,reason}``        deferrals; reason: the refusing guard's
                                                  kind, or ``outage``
``taskguard_admission_seconds{task}``             admission time (histogram), waits incl.
``taskguard_lock_wait_seconds{task}``             time spent in a bounded wait for a lock
                                                  or slot (tasks with ``wait``)
``taskguard_circuit_state{breaker,state}``        1 for the state a breaker was last seen
                                                  entering, 0 for the others
``taskguard_writebehind_backlog{namespace}``      records queued, not yet written
``taskguard_writebehind_oldest_age_seconds``      age of the oldest queued record
``taskguard_drain_rows_total{namespace,result}``  rows ``written`` / ``dead_lettered``
``taskguard_dead_letters{namespace}``             records in the dead-letter stream
================================================  =======================================

The write-behind gauges are read from Redis when scraped. Under a prefork worker each pool
process writes its samples to prometheus_client's multiprocess directory
(``PROMETHEUS_MULTIPROC_DIR``) and the endpoint, in the worker's parent, adds them up.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from taskguard import _instrument, signals
from taskguard.backend.base import Backend
from taskguard.backend.redis import RedisBackend
from taskguard.drain.discovery import queued_partitions
from taskguard.drain.metrics import metrics as queue_figures
from taskguard.errors import TaskGuardError

from ._labels import described, guard_label

try:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
    from prometheus_client.core import GaugeMetricFamily, Metric
except ImportError as exc:  # pragma: no cover - the [prometheus] extra is not installed
    raise ImportError(
        "taskguard's Prometheus metrics need prometheus-client: "
        "pip install 'celery-taskguard[prometheus]'"
    ) from exc

__all__ = ["Metrics", "QueueCollector", "install", "serve", "uninstall"]

logger = logging.getLogger("taskguard.metrics")

BREAKER_STATES = ("closed", "open", "half_open")
#: Admission time: a round trip is ~0.1 ms; a bounded wait takes seconds.
ADMISSION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_ADMITTED = frozenset({"allowed", "degraded"})
#: Sets of labelled children kept for admissions, at most (then all are looked up again).
_KEEP_CHILDREN = 4096
#: An admission's guards, its histogram child, its wait histogram child (or None), and
#: its counter children.
_Children = tuple[tuple[Any, ...], Any, Any | None, tuple[Any, ...]]


class Metrics(_instrument.Hook):
    """The metrics of one process, fed by activities (a hook) and signals.

    Args:
        registry: Where the metrics are registered (None: not registered, as a
            multiprocess exporter wants).
    """

    def __init__(self, registry: CollectorRegistry | None = prometheus_client.REGISTRY) -> None:
        self.admissions = Counter(
            "taskguard_admissions",
            "Admission decisions per task and guard.",
            ["task", "guard", "result"],
            registry=registry,
        )
        self.deferrals = Counter(
            "taskguard_deferrals",
            "Tasks re-published to run later, by the kind of guard that refused them.",
            ["task", "reason"],
            registry=registry,
        )
        self.admission_seconds = Histogram(
            "taskguard_admission_seconds",
            "Time to admit a task run (one round trip, plus any bounded wait).",
            ["task"],
            buckets=ADMISSION_BUCKETS,
            registry=registry,
        )
        self.lock_wait_seconds = Histogram(
            "taskguard_lock_wait_seconds",
            "Time a task run waited in the worker for a lock or slot (guards with wait).",
            ["task"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.circuit_state = Gauge(
            "taskguard_circuit_state",
            "1 for the state a circuit breaker last entered, 0 for the others.",
            ["breaker", "state"],
            multiprocess_mode="mostrecent",
            registry=registry,
        )
        #: (task, decision, guard ids) -> the children an admission counts, looked up
        #: once: ``.labels()`` takes a lock and builds a key on every call.
        self._children: dict[tuple[Any, ...], _Children] = {}
        self.drain_rows = Counter(
            "taskguard_drain_rows",
            "Write-behind rows the drain wrote, or moved to the dead letters.",
            ["namespace", "result"],
            registry=registry,
        )

    # ------------------------------------------------------------ activities (a Hook)

    def finish(
        self, activity: _instrument.Activity, state: Any, error: BaseException | None
    ) -> None:
        op = activity.op
        if op == _instrument.ADMIT:
            self._admitted(activity)
        elif op == _instrument.PUBLISH and activity.data.get("kind") == "deferral":
            data = activity.data
            self.deferrals.labels(data["task"], data.get("cause") or "unknown").inc()

    def _admitted(self, activity: _instrument.Activity) -> None:
        data = activity.data
        decision = data.get("decision")
        if decision is None:  # the admission raised before deciding
            return
        if decision in _ADMITTED:
            guards = data.get("guards", ())
            key = (data["task"], decision, *map(id, guards))
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = self._admission_children(data, decision)
            _, seconds, waited, counted = children
            seconds.observe(activity.duration)
            if waited is not None:
                waited.observe(data.get("waited", 0.0))
            for counter in counted:
                counter.inc()
            return
        # A refusal: rarer, and its guard varies; no children kept.
        task = data["task"]
        self.admission_seconds.labels(task).observe(activity.duration)
        if described(data.get("guards", ())).waits:
            self.lock_wait_seconds.labels(task).observe(data.get("waited", 0.0))
        result = "deferred" if decision == "deferred" else "denied"
        self.admissions.labels(task, guard_label(data.get("guard")), result).inc()

    def _admission_children(self, data: dict[str, Any], decision: str) -> _Children:
        """The labelled metrics an admission of these guards with this decision counts."""
        task = data["task"]
        guards = described(data.get("guards", ()))
        waited = self.lock_wait_seconds.labels(task) if guards.waits else None
        counted = tuple(self.admissions.labels(task, label, decision) for label in guards.labels)
        if len(self._children) >= _KEEP_CHILDREN:
            self._children.clear()
        # The guards are kept with their children: while kept, their ids are theirs.
        return guards.guards, self.admission_seconds.labels(task), waited, counted

    # ------------------------------------------------------------ signals

    def circuit_state_changed(self, sender: Any = None, **kwargs: Any) -> None:
        name, new = str(kwargs.get("name")), kwargs.get("new")
        for state in BREAKER_STATES:
            self.circuit_state.labels(name, state).set(1 if state == new else 0)

    def drain_batch_written(self, sender: Any = None, **kwargs: Any) -> None:
        rows = int(kwargs.get("rows", 0))
        if rows:
            self.drain_rows.labels(kwargs["namespace"], "written").inc(rows)

    def dead_lettered(self, sender: Any = None, **kwargs: Any) -> None:
        self.drain_rows.labels(kwargs["namespace"], "dead_lettered").inc(len(kwargs["keys"]))

    def shadow_denied(self, sender: Any = None, **kwargs: Any) -> None:
        task = getattr(sender, "name", str(sender))
        self.admissions.labels(task, guard_label(kwargs.get("guard")), "shadow_denied").inc()

    def connect(self) -> None:
        signals.shadow_denied.connect(self.shadow_denied, weak=False)
        signals.circuit_state_changed.connect(self.circuit_state_changed, weak=False)
        signals.drain_batch_written.connect(self.drain_batch_written, weak=False)
        signals.dead_lettered.connect(self.dead_lettered, weak=False)

    def disconnect(self) -> None:
        signals.shadow_denied.disconnect(self.shadow_denied)
        signals.circuit_state_changed.disconnect(self.circuit_state_changed)
        signals.drain_batch_written.disconnect(self.drain_batch_written)
        signals.dead_lettered.disconnect(self.dead_lettered)


_installed: Metrics | None = None


def install(registry: CollectorRegistry | None = prometheus_client.REGISTRY) -> Metrics:
    """Start counting in this process (idempotent: the installed metrics are returned).

    Args:
        registry: Where the metrics are registered (see :class:`Metrics`).
    """
    global _installed  # noqa: PLW0603 - one set of metrics per process
    if _installed is None:
        _installed = Metrics(registry)
        _installed.connect()
        _instrument.install(_installed)
    return _installed


def uninstall() -> None:
    """Stop counting (the metrics stay registered where they were)."""
    global _installed  # noqa: PLW0603
    if _installed is not None:
        _instrument.uninstall(_installed)
        _installed.disconnect()
        _installed = None


class QueueCollector:
    """The write-behind gauges, read from Redis at each scrape.

    Args:
        backend: The Redis backend the caches write to (same prefix).
        namespaces: The namespaces to report (empty: every registered one).
    """

    def __init__(self, backend: RedisBackend, namespaces: Sequence[str] = ()) -> None:
        self.backend = backend
        self.namespaces = tuple(namespaces)

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> Iterator[GaugeMetricFamily]:
        labels = ["namespace"]
        yield GaugeMetricFamily(
            "taskguard_writebehind_backlog", "Write-behind records not yet written.", labels=labels
        )
        yield GaugeMetricFamily(
            "taskguard_writebehind_oldest_age_seconds",
            "Age of the oldest write-behind record not yet written.",
            labels=labels,
        )
        yield GaugeMetricFamily(
            "taskguard_dead_letters", "Records in the dead-letter stream.", labels=labels
        )

    def collect(self) -> Iterable[Metric]:
        backlog, age, dead = self._families()
        try:
            names = self.namespaces or tuple(sorted(queued_partitions(self.backend)))
            for namespace in names:
                figures = queue_figures(self.backend, namespace)
                backlog.add_metric([namespace], figures.backlog)
                age.add_metric([namespace], figures.oldest_age)
                dead.add_metric([namespace], figures.dead_letters)
        except TaskGuardError as exc:  # Redis down, or a namespace not (yet) registered
            logger.debug("write-behind gauges unavailable: %s", exc)
        return [backlog, age, dead]


def exposition_registry(
    backend: Backend | None = None,
    namespaces: Sequence[str] = (),
    registry: CollectorRegistry = prometheus_client.REGISTRY,
) -> CollectorRegistry:
    """What ``/metrics`` serves: ``registry`` (in multiprocess mode, every process's
    samples instead), plus the write-behind gauges when ``backend`` is Redis."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    if isinstance(backend, RedisBackend):
        registry.register(QueueCollector(backend, namespaces))
    return registry


def serve(
    port: int,
    backend: Backend | None = None,
    *,
    address: str = "0.0.0.0",
    namespaces: Sequence[str] = (),
    registry: CollectorRegistry = prometheus_client.REGISTRY,
) -> Any:
    """Serve ``/metrics`` from a daemon thread; returns the HTTP server (``.shutdown()``;
    ``.server_port`` is the port, when 0 asked for a free one)."""
    registry = exposition_registry(backend, namespaces, registry)
    server, _thread = prometheus_client.start_http_server(port, address, registry=registry)
    logger.info("taskguard: metrics on http://%s:%d/metrics", address, server.server_port)
    return server
