"""The Sentry integration with a real ``sentry_sdk.init`` and a recording transport, on
the memory backend in this process: spans, breadcrumbs, error context, and the trace
headers a deferral keeps. Cache and drain spans need Redis: tests/contract/test_sentry.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from celery import Celery
from celery.exceptions import Ignore
from sentry_sdk.integrations.celery import CeleryIntegration

from taskguard import CircuitBreaker, Concurrency, GuardedTask, RateLimit, signals
from taskguard.backend.memory import MemoryBackend
from taskguard.guards.breaker_events import announce
from taskguard.sentry import TaskguardIntegration
from tests.sentry_transport import ENVELOPES, errors, recording, spans, transactions

from .celery_harness import celery_app, published, run_as_worker

TRACE_ID = "771a43a4192642f0b136d5159a501700"
INCOMING = {
    "sentry-trace": f"{TRACE_ID}-b7ad6b7169203331-1",
    "baggage": f"sentry-trace_id={TRACE_ID},sentry-sample_rate=1.0,other=kept",
}


@pytest.fixture
def recorded() -> Iterator[list[dict[str, Any]]]:
    with recording(TaskguardIntegration(), CeleryIntegration()) as envelopes:
        yield envelopes


@pytest.fixture
def app(backend: MemoryBackend) -> Iterator[Celery]:
    with celery_app(backend) as app:
        yield app


def in_transaction(task: Any, *args: Any, headers: dict[str, Any] | None = None, **kw: Any) -> Any:
    """Run ``task`` as the worker would, inside a transaction like the Celery integration's."""
    transaction = sentry_sdk.continue_trace(
        headers or {}, op="queue.task.celery", name=task.name, source="task"
    )
    with sentry_sdk.start_transaction(transaction):
        if headers:
            task.push_request(
                id=kw.pop("task_id", "tid-1"),
                args=args,
                kwargs={},
                called_directly=False,
                is_eager=False,
                headers=headers,
                retries=0,
                delivery_info={"exchange": "", "routing_key": task.app.conf.task_default_queue},
            )
            try:
                return task(*args)
            finally:
                task.pop_request()
        return run_as_worker(task, *args, **kw)


def test_nothing_is_installed_or_sent_without_sentry_init(app: Celery) -> None:
    ENVELOPES.clear()

    @app.task(base=GuardedTask, guards=[RateLimit("10/s")], shared=False)
    def work() -> int:
        return 1

    assert run_as_worker(work) == 1
    sentry_sdk.flush()
    assert ENVELOPES == []
    # Importing the integration installs nothing: sentry_sdk.init(...) does, once.
    fresh = subprocess.run(
        [sys.executable, "-c", "import taskguard.sentry, taskguard._instrument as i; "
         "assert i.hooks() == () and not i.on"],
        check=False,
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert fresh.returncode == 0, fresh.stderr


def test_admission_and_release_spans_carry_guards_and_decision(
    app: Celery, recorded: list[dict[str, Any]]
) -> None:
    @app.task(base=GuardedTask, guards=[RateLimit("10/s"), Concurrency(3)], shared=False)
    def work() -> int:
        return 1

    assert in_transaction(work) == 1
    sentry_sdk.flush()
    (transaction,) = transactions(recorded)
    ops = [s["op"] for s in transaction["spans"]]
    assert ops == ["taskguard.admit", "taskguard.release"]
    (admit,) = spans(recorded, "taskguard.admit")
    data = admit["data"]
    assert data["taskguard.decision"] == "allowed"
    assert data["taskguard.guard_kinds"] == ["concurrency", "rate_limit"]
    assert sorted(data["taskguard.guards"]) == [
        f"concurrency:{work.name}",
        f"rate_limit:{work.name}",
    ]
    assert data["taskguard.retry_after"] == 0.0
    assert data["taskguard.degraded"] is False
    # Only what is not said elsewhere: the task is the span's name and the transaction's;
    # a deferral count and a wait when not zero; no "ok" status (Sentry's own spans set none).
    assert admit["description"] == f"admit {work.name}"
    assert "taskguard.task" not in data
    assert "taskguard.deferrals" not in data
    assert "taskguard.waited" not in data
    assert "status" not in admit
    (release,) = spans(recorded, "taskguard.release")
    assert release["data"]["taskguard.outcome"] == "success"
    assert release["data"]["taskguard.guard_kinds"] == ["concurrency", "rate_limit"]
    # The guard context is for errors; a transaction keeps the tag, to search by.
    assert "taskguard" not in transaction["contexts"]
    assert transaction["tags"]["taskguard.guards"] == ",".join(data["taskguard.guards"])


def test_a_deferral_publishes_in_a_queue_publish_span_and_keeps_the_trace(
    app: Celery, recorded: list[dict[str, Any]]
) -> None:
    @app.task(base=GuardedTask, guards=[RateLimit("1/m")], shared=False)
    def limited() -> None:
        return None

    in_transaction(limited, task_id="first")
    with pytest.raises(Ignore):
        in_transaction(limited, headers=dict(INCOMING), task_id="second")
    sentry_sdk.flush()
    admit = spans(recorded, "taskguard.admit")[-1]
    assert admit["data"]["taskguard.decision"] == "deferred"
    assert admit["data"]["taskguard.denied_by"] == f"rate_limit:{limited.name}"
    assert admit["data"]["taskguard.retry_after"] > 0
    publish = next(s for s in spans(recorded, "queue.publish") if s["origin"] == "auto.taskguard")
    assert publish["data"]["messaging.message.id"] == "second"
    assert (
        publish["data"]["messaging.destination.name"] == app.conf.task_default_queue + ".deferred"
    )
    assert publish["data"]["taskguard.deferrals"] == 1
    assert publish["data"]["taskguard.cause"] == "rate_limit"
    assert publish["parent_span_id"] == admit["span_id"]
    # The deferred message continues the incoming trace, its parent now the publish.
    (message,) = published(app)
    headers = message.headers
    trace_id, parent, _ = headers["sentry-trace"].split("-")
    assert trace_id == TRACE_ID
    deferred_transaction = transactions(recorded)[-1]
    assert deferred_transaction["contexts"]["trace"]["trace_id"] == TRACE_ID
    inside = {s["span_id"] for s in deferred_transaction["spans"]}
    assert parent in inside
    assert f"sentry-trace_id={TRACE_ID}" in headers["baggage"]
    assert "other=kept" in headers["baggage"]
    assert headers["taskguard-deferrals"] == 1


def test_without_sentry_a_deferral_keeps_the_trace_headers_unchanged(app: Celery) -> None:
    @app.task(base=GuardedTask, guards=[RateLimit("1/m")], shared=False)
    def limited() -> None:
        return None

    run_as_worker(limited, task_id="first")
    limited.push_request(
        id="second",
        args=(),
        kwargs={},
        called_directly=False,
        is_eager=False,
        headers=dict(INCOMING),
        retries=0,
        delivery_info={"exchange": "", "routing_key": app.conf.task_default_queue},
    )
    try:
        with pytest.raises(Ignore):
            limited()
    finally:
        limited.pop_request()
    (message,) = published(app)
    assert message.headers["sentry-trace"] == INCOMING["sentry-trace"]
    assert message.headers["baggage"] == INCOMING["baggage"]
    assert message.headers["taskguard-deferrals"] == 1


def test_denials_lost_leases_and_breaker_changes_leave_breadcrumbs(
    app: Celery, recorded: list[dict[str, Any]]
) -> None:
    @app.task(base=GuardedTask, guards=[RateLimit("1/m")], shared=False)
    def limited() -> None:
        signals.lease_lost.send(sender=limited, task_id="first", key="tg:lock:x")
        announce("partner", "closed", "open", "failure or slow-call threshold reached")
        raise RuntimeError("partner down")

    with pytest.raises(RuntimeError):
        in_transaction(limited, task_id="first")
    with pytest.raises(Ignore):
        in_transaction(limited, task_id="second")
    sentry_sdk.capture_message("after the denial")
    sentry_sdk.flush()
    event = next(e for e in errors(recorded) if e.get("message") == "after the denial")
    crumbs = {c["category"]: c for c in event["breadcrumbs"]["values"]}
    assert crumbs["taskguard.lease_lost"]["level"] == "warning"
    assert crumbs["taskguard.lease_lost"]["data"]["key"] == "tg:lock:x"
    assert crumbs["taskguard.breaker"]["data"]["new"] == "open"
    assert crumbs["taskguard.breaker"]["level"] == "warning"
    denied = crumbs["taskguard.denied"]
    assert denied["data"]["guard"] == f"rate_limit:{limited.name}"
    assert denied["data"]["retry_after"] > 0


def test_an_error_of_a_guarded_task_names_its_guards(
    app: Celery, recorded: list[dict[str, Any]]
) -> None:
    breaker = CircuitBreaker("partner-api", failure_rate=0.5, window=20, open_for=30)

    @app.task(base=GuardedTask, guards=[breaker, RateLimit("10/s")], shared=False)
    def call_partner() -> None:
        raise RuntimeError("partner down")

    with sentry_sdk.isolation_scope():
        try:
            in_transaction(call_partner)
        except RuntimeError:
            sentry_sdk.capture_exception()
    sentry_sdk.flush()
    (error,) = errors(recorded)
    context = error["contexts"]["taskguard"]
    assert context["task"] == call_partner.name
    assert sorted(context["guards"]) == [
        "circuit_breaker:partner-api",
        f"rate_limit:{call_partner.name}",
    ]
    assert context["decision"] == "allowed"
    assert "circuit_breaker:partner-api" in error["tags"]["taskguard.guards"]
    release = spans(recorded, "taskguard.release")[0]
    assert release["data"]["taskguard.outcome"] == "failure"


def test_after_the_client_goes_the_hook_opens_no_span(app: Celery) -> None:
    with recording(TaskguardIntegration()):
        pass  # installed for good (setup_once); the client without it follows

    @app.task(base=GuardedTask, guards=[RateLimit("10/s")], shared=False)
    def work() -> int:
        return 1

    with sentry_sdk.start_transaction(name="t"):
        assert run_as_worker(work) == 1
    sentry_sdk.flush()
    assert ENVELOPES == []
