"""Prometheus metrics in this process (memory backend, a fresh registry), parsed back with
prometheus_client's own parser; the ``metrics`` settings and ``--metrics-port``. A real
prefork worker is scraped in tests/integration/test_observability.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import Ignore
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from taskguard import Concurrency, GuardedTask, Lock, RateLimit, _instrument, signals
from taskguard.backend.memory import MemoryBackend
from taskguard.celery import Settings
from taskguard.celery._metrics_settings import MetricsSettings
from taskguard.cli import taskguard as cli
from taskguard.errors import ConfigurationError
from taskguard.guards.breaker_events import announce
from taskguard.integrations import prometheus, worker
from taskguard.integrations.prometheus import Metrics, QueueCollector

from .celery_harness import DEAD_URL, celery_app, run_as_worker


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.connect()
    _instrument.install(metrics)
    try:
        yield registry
    finally:
        _instrument.uninstall(metrics)
        metrics.disconnect()


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return samples(registry).get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def app(backend: MemoryBackend) -> Iterator[Celery]:
    with celery_app(backend) as app:
        yield app


def test_admissions_deferrals_and_timings_are_counted(
    app: Celery, registry: CollectorRegistry
) -> None:
    @app.task(base=GuardedTask, guards=[RateLimit("2/m", burst=2), Concurrency(5)], shared=False)
    def work() -> None:
        return None

    run_as_worker(work, task_id="a")
    run_as_worker(work, task_id="b")
    with pytest.raises(Ignore):
        run_as_worker(work, task_id="c")
    name = work.name
    rate, cap = f"rate_limit:{name}", f"concurrency:{name}"
    assert (
        value(registry, "taskguard_admissions_total", task=name, guard=rate, result="allowed") == 2
    )
    assert (
        value(registry, "taskguard_admissions_total", task=name, guard=cap, result="allowed") == 2
    )
    assert (
        value(registry, "taskguard_admissions_total", task=name, guard=rate, result="deferred") == 1
    )
    assert value(registry, "taskguard_deferrals_total", task=name, reason="rate_limit") == 1
    assert value(registry, "taskguard_admission_seconds_count", task=name) == 3
    assert value(registry, "taskguard_admission_seconds_bucket", task=name, le="+Inf") == 3
    # No bounded wait configured: no lock-wait observations.
    assert value(registry, "taskguard_lock_wait_seconds_count", task=name) == 0


def test_a_skipped_run_counts_as_denied_and_waits_are_observed(
    app: Celery, registry: CollectorRegistry
) -> None:
    @app.task(base=GuardedTask, guards=[Lock(on_conflict="skip", wait=0.5)], shared=False)
    def exclusive(inner: bool) -> None:
        if inner:
            with pytest.raises(Ignore):
                run_as_worker(exclusive, False, task_id="inner")

    lock = f"lock:{exclusive.name}"
    app.conf.taskguard = {"deferral_jitter": 0}
    # The inner run finds the lock held; its bounded wait ends at once on the fake clock's
    # backend (the holder is this very run), then it is skipped.
    run_as_worker(exclusive, True, task_id="outer")
    task = exclusive.name
    assert (
        value(registry, "taskguard_admissions_total", task=task, guard=lock, result="allowed") == 1
    )
    assert (
        value(registry, "taskguard_admissions_total", task=task, guard=lock, result="denied") == 1
    )
    assert value(registry, "taskguard_lock_wait_seconds_count", task=task) == 2


def test_breaker_states_are_zero_one_gauges(registry: CollectorRegistry) -> None:
    announce("partner", "closed", "open", "threshold")
    assert value(registry, "taskguard_circuit_state", breaker="partner", state="open") == 1
    assert value(registry, "taskguard_circuit_state", breaker="partner", state="closed") == 0
    announce("partner", "open", "half_open", "open_for elapsed")
    assert value(registry, "taskguard_circuit_state", breaker="partner", state="open") == 0
    assert value(registry, "taskguard_circuit_state", breaker="partner", state="half_open") == 1


def test_drain_rows_are_counted_by_result(registry: CollectorRegistry) -> None:
    signals.drain_batch_written.send(
        sender=None, namespace="orders", partition=0, records=5, rows=4, duration=0.01
    )
    signals.dead_lettered.send(
        sender=None, namespace="orders", keys=["k1", "k2"], error="bad", attempts=1
    )
    assert value(registry, "taskguard_drain_rows_total", namespace="orders", result="written") == 4
    assert (
        value(registry, "taskguard_drain_rows_total", namespace="orders", result="dead_lettered")
        == 2
    )


def test_queue_gauges_are_empty_while_redis_is_down() -> None:
    import taskguard

    backend = taskguard.connect(DEAD_URL, prefix="tgu").backend
    try:
        registry = CollectorRegistry()
        registry.register(QueueCollector(backend))  # type: ignore[arg-type]
        text = generate_latest(registry).decode()
    finally:
        backend.close()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert names == {
        "taskguard_writebehind_backlog",
        "taskguard_writebehind_oldest_age_seconds",
        "taskguard_dead_letters",
    }
    assert all(not f.samples for f in text_string_to_metric_families(text))


def test_install_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_instrument, "_hooks", ())
    monkeypatch.setattr(_instrument, "on", False)
    registry = CollectorRegistry()
    try:
        first = prometheus.install(registry)
        assert prometheus.install(registry) is first
        assert first in _instrument.hooks()
    finally:
        prometheus.uninstall()
    assert _instrument.hooks() == ()


# ---------------------------------------------------------------- settings


def test_metrics_settings_are_validated_naming_the_field() -> None:
    assert Settings.from_mapping({}).metrics == MetricsSettings()
    assert not MetricsSettings().enabled
    settings = Settings.from_mapping({"metrics": {"port": 9808, "address": "127.0.0.1"}})
    assert (settings.metrics.port, settings.metrics.address) == (9808, "127.0.0.1")
    bad: list[tuple[Any, str]] = [
        ({"port": "9808"}, "metrics.port"),
        ({"port": 70000}, "metrics.port"),
        ({"port": True}, "metrics.port"),
        ({"prot": 1}, "metrics.prot"),
        ({"address": ""}, "metrics.address"),
        ("9808", "metrics"),
    ]
    for raw, field in bad:
        with pytest.raises(ConfigurationError) as caught:
            Settings.from_mapping({"metrics": raw})
        assert caught.value.field == field, raw


def test_the_multiprocess_directory_is_made_before_prometheus_client_loads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv(worker.ENV, str(tmp_path))
    assert worker.prepare_multiprocess_dir(MetricsSettings(port=1)) is None  # given: kept
    monkeypatch.delenv(worker.ENV)
    # prometheus_client is loaded in this process: its pool processes' samples would be
    # lost, so the worker refuses to start rather than serve partial numbers.
    with pytest.raises(ConfigurationError) as caught:
        worker.prepare_multiprocess_dir(MetricsSettings(port=1))
    assert caught.value.field == "metrics.multiprocess_dir"
    assert worker.ENV not in os.environ


def test_drain_metrics_port_is_checked_like_the_setting() -> None:
    result = CliRunner().invoke(
        cli, ["drain", "--store", "sqlite:///x.db", "--metrics-port", "70000"]
    )
    assert result.exit_code == 2
    assert "--metrics-port" in result.output


def test_labelled_children_are_kept_per_set_of_guards(registry: CollectorRegistry) -> None:
    # Admissions reuse the labelled children of their task, decision and guards: a task of
    # the same name with other guards (another app, a reload) counts under its own labels.
    guards = {
        "first": RateLimit("10/s", burst=5, name="api"),
        "second": Concurrency(3, name="pool"),
    }
    for backend_name, guard in guards.items():
        with celery_app(MemoryBackend()) as app:

            @app.task(base=GuardedTask, guards=[guard], shared=False, name="proj.same")
            def same() -> None:
                return None

            run_as_worker(same, task_id=f"{backend_name}-1")
            run_as_worker(same, task_id=f"{backend_name}-2")
    counted = {"rate_limit:api": 2, "concurrency:pool": 2}
    for label, runs in counted.items():
        assert (
            value(
                registry,
                "taskguard_admissions_total",
                task="proj.same",
                guard=label,
                result="allowed",
            )
            == runs
        )
    assert value(registry, "taskguard_admission_seconds_count", task="proj.same") == 4
