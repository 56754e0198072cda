"""Sentry and Prometheus in real processes: a prefork worker (-c 2) with both on, and
``taskguard drain --metrics-port``. Spans come from a real ``sentry_sdk.init`` whose
transport writes to Redis (apps/observed.py); metrics are scraped over HTTP and parsed
with prometheus_client's own parser."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import taskguard
from tests.unit.test_cache_fakes import MemoryStore

from .conftest import ROOT, Fleet

APP = "tests.integration.apps.observed"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``(sample name, sorted labels) -> value`` of one scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict[Any, float], name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, pairs), value in samples.items()
        if sample == name and labels.items() <= dict(pairs).items()
    )


def poll(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, OSError):  # OSError: the endpoint is not up yet
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


@pytest.fixture(scope="module")
def observed(fleet_factory: Callable[..., Fleet]) -> tuple[Fleet, int]:
    port = free_port()
    fleet = fleet_factory(app=APP, settings={"metrics": {"port": port, "address": "127.0.0.1"}})
    fleet.start(count=1, concurrency=2)
    return fleet, port


@pytest.fixture(scope="module")
def ran(observed: tuple[Fleet, int]) -> tuple[Fleet, int]:
    """The fleet after its work: 40 no-ops, 10 rate-limited tasks (some deferred), 3
    failures of a breaker's task, and 5 queued write-behind writes."""
    fleet, port = observed
    results = [fleet.send("noop", i) for i in range(40)]
    results += [fleet.send("limited", i) for i in range(10)]
    results.append(fleet.send("write_behind", 5))
    for result in results:
        result.get(timeout=120)
    for i in range(3):
        with pytest.raises(Exception, match=r"partner down|circuit"):
            fleet.send("partner", i).get(timeout=60)
    return fleet, port


def test_worker_sends_taskguard_spans_in_celery_transactions(ran: tuple[Fleet, int]) -> None:
    fleet, _ = ran

    def recorded() -> list[dict[str, Any]]:
        events = fleet.records("sentry")
        ops = {s["op"] for e in events for s in e["spans"]}
        assert {"taskguard.admit", "taskguard.release", "queue.publish", "cache.put"} <= ops
        return events

    events = poll(recorded)
    runs = [e for e in events if e["type"] == "transaction" and e["op"] == "queue.task.celery"]
    noops = [e for e in runs if e["transaction"].endswith(".noop")]
    assert len(noops) == 40
    assert len({e["pid"] for e in noops}) == 2, "both pool processes must have run no-ops"
    admit = next(s for s in noops[0]["spans"] if s["op"] == "taskguard.admit")
    assert admit["data"]["taskguard.decision"] == "allowed"
    assert admit["data"]["taskguard.guard_kinds"] == ["rate_limit"]
    # A deferred task: the publish span names the message, and the run that follows
    # continues the same trace.
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in runs:
        if event["transaction"].endswith(".limited"):
            by_task[event["tags"]["celery_task_id"]].append(event)
    deferred = {tid: evs for tid, evs in by_task.items() if len(evs) > 1}
    assert deferred, "5/s for 10 tasks sent at once must defer some"
    for task_id, evs in deferred.items():
        assert len({e["trace_id"] for e in evs}) == 1
        publishes = [s for e in evs for s in e["spans"] if s["data"].get("taskguard.deferrals")]
        assert publishes
        assert publishes[0]["data"]["messaging.message.id"] == task_id
        assert publishes[0]["data"]["messaging.destination.name"] == fleet.queue + ".deferred"
    # The breaker's failures are errors that name the guard.
    failures = [e for e in events if e["type"] == "error" and e["taskguard"]]
    assert failures
    assert failures[0]["taskguard"]["guards"] == ["circuit_breaker:obs-partner"]
    assert failures[0]["tags"]["taskguard.guards"] == "circuit_breaker:obs-partner"


def test_prefork_worker_serves_metrics_of_both_pool_processes(ran: tuple[Fleet, int]) -> None:
    _, port = ran
    noop, limited = f"{APP}.noop", f"{APP}.limited"

    def scraped() -> dict[Any, float]:
        samples = scrape(port)
        assert total(samples, "taskguard_admissions_total", task=limited, result="allowed") == 10
        assert total(samples, "taskguard_circuit_state", breaker="obs-partner", state="open") == 1
        return samples

    samples = poll(scraped)
    assert total(samples, "taskguard_admissions_total", task=noop, result="allowed") == 40
    assert total(samples, "taskguard_admissions_total", task=noop, guard=f"rate_limit:{noop}") == 40
    assert total(samples, "taskguard_admission_seconds_count", task=noop) == 40
    deferred = total(samples, "taskguard_admissions_total", task=limited, result="deferred")
    assert deferred >= 1
    assert (
        total(samples, "taskguard_deferrals_total", task=limited, reason="rate_limit") == deferred
    )
    assert total(samples, "taskguard_circuit_state", breaker="obs-partner", state="closed") == 0
    assert total(samples, "taskguard_writebehind_backlog", namespace="obs-orders") == 5
    assert total(samples, "taskguard_writebehind_oldest_age_seconds", namespace="obs-orders") >= 0
    assert total(samples, "taskguard_dead_letters", namespace="obs-orders") == 0
    # Labels stay low-cardinality: no bucket key, no task id.
    for name, pairs in samples:
        if name.startswith("taskguard_"):
            assert {k for k, _ in pairs} <= {"task", "guard", "result", "reason", "breaker",
                                             "state", "namespace", "le"}, name  # fmt: skip


@pytest.fixture
def drain_process(redis_url: str, tg_prefix: str, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    command = [
        sys.executable, "-c", "from taskguard.cli import main; main()", "drain",
        "--redis-url", redis_url, "--prefix", tg_prefix,
        "--store", f"sqlite:///{tmp_path / 'drain.db'}", "--namespace", "obs-drain",
        "--metrics-port", str(port), "--metrics-address", "127.0.0.1", "--linger", "0.01",
    ]  # fmt: skip
    log = open(tmp_path / "drain.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield port
    finally:
        process.terminate()
        process.wait(30)
        log.close()
        if process.returncode not in (0, -15):
            pytest.fail((tmp_path / "drain.log").read_text())


def test_taskguard_drain_serves_its_metrics(
    redis_url: str, tg_prefix: str, drain_process: int
) -> None:
    backend = taskguard.connect(redis_url, prefix=tg_prefix).backend
    cache = taskguard.connect(backend).cache(
        "obs-drain", ttl=60, strategy="write-behind", store=MemoryStore()
    )
    cache.set_many({f"k{i}": {"i": i} for i in range(20)})

    def drained() -> dict[Any, float]:
        samples = scrape(drain_process)
        written = total(
            samples, "taskguard_drain_rows_total", namespace="obs-drain", result="written"
        )
        assert written == 20
        return samples

    samples = poll(drained)
    assert total(samples, "taskguard_writebehind_backlog", namespace="obs-drain") == 0
    assert total(samples, "taskguard_drain_rows_total", result="dead_lettered") == 0
    backend.close()
