"""Guard events in one process: the schema, publish_event, the signal handlers, subscribe,
the ``events`` setting and its worker step, the CLI's line format.

The memory backend carries events through a hub in the process, so publishing and
subscribing need no server here; tests/contract/test_events.py does the same on Redis,
across processes, and through the CLI.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import Ignore

import taskguard
from taskguard import (
    CircuitBreaker,
    ConfigurationError,
    DeferralExhausted,
    GuardedTask,
    RateLimit,
    events,
    signals,
)
from taskguard.celery import Settings, runtime_for
from taskguard.celery._deferral import HEADER_COUNT, HEADER_SINCE
from taskguard.celery._events import EventsStep
from taskguard.celery._events_settings import EventsSettings
from taskguard.cli.events import render
from taskguard.clock import FakeClock
from taskguard.errors import BackendUnavailable
from taskguard.events import Event, EventStream, publish_event
from taskguard.events import publish as publish_module
from taskguard.guards.breaker_events import announce
from taskguard.keys import KeySchema

from .celery_harness import celery_app, run_as_worker


@pytest.fixture
def client() -> taskguard.Client:
    return taskguard.connect(taskguard.MemoryBackend(clock=FakeClock()))


@pytest.fixture
def stream(client: taskguard.Client) -> Iterator[EventStream]:
    with client.events(timeout=0.05) as stream:
        yield stream


@pytest.fixture
def installed(client: taskguard.Client) -> Iterator[taskguard.Client]:
    events.install(client)
    try:
        yield client
    finally:
        events.uninstall()


def received(stream: EventStream) -> list[Event]:
    """Every event waiting in ``stream`` (iteration ends after its short timeout)."""
    return list(stream)


# ---------------------------------------------------------------- schema


def test_an_event_is_one_flat_json_object_that_parses_back() -> None:
    event = Event("lease_lost", 12.5, "tg", "h1", 9, {"key": "k", "kind": None})
    assert event.to_dict() == {
        "type": "lease_lost",
        "at": 12.5,
        "prefix": "tg",
        "host": "h1",
        "pid": 9,
        "key": "k",
        "kind": None,
    }
    assert Event.from_json(event.to_json()) == event
    assert event["pid"] == 9
    assert event.get("missing", "-") == "-"


@pytest.mark.parametrize(
    "message",
    [
        "not json",
        "[1]",
        '{"type": "admin"}',
        '{"type":"a","at":"x","prefix":"p","host":"h","pid":1}',
    ],
)
def test_a_message_that_is_not_an_event_is_refused(message: str) -> None:
    with pytest.raises(ValueError, match=r"JSON|must be"):
        Event.from_json(message)


def test_publish_event_checks_the_type_and_its_fields(client: taskguard.Client) -> None:
    with pytest.raises(ValueError, match="unknown event type 'nope'"):
        publish_event(client, "nope")
    with pytest.raises(ValueError, match="needs the field 'action'"):
        publish_event(client, "limit_changed", name="api")
    with pytest.raises(ValueError, match="has no field 'colour'"):
        publish_event(client, "limit_changed", name="api", action="set", colour="red")


def test_publish_event_adds_the_common_fields_and_nulls(
    client: taskguard.Client, stream: EventStream
) -> None:
    assert publish_event(client, "limit_changed", name="api", action="set", rate="10/s")
    [event] = received(stream)
    assert (event.type, event.prefix, event.pid) == ("limit_changed", "tg", os.getpid())
    assert event.fields == {
        "name": "api",
        "action": "set",
        "rate": "10/s",
        "key": None,
        "burst": None,
        "user": None,
        "kind": None,
        "limit": None,
    }


# ---------------------------------------------------------------- subscribe


def test_types_filter_what_a_stream_receives(client: taskguard.Client) -> None:
    with client.events(types=["admin"], timeout=0.05) as only_admin:
        publish_event(client, "limit_changed", name="api", action="clear")
        publish_event(client, "admin", action="breaker_open", name="geo")
        assert [e.type for e in received(only_admin)] == ["admin"]
    with pytest.raises(ValueError, match="unknown event type 'admn'"):
        events.subscribe(client, types=["admn"])
    with pytest.raises(ValueError, match="prefix goes with a URL"):
        events.subscribe(client, prefix="other")


def test_another_prefix_is_another_channel(client: taskguard.Client) -> None:
    other = taskguard.connect(taskguard.MemoryBackend(keys=KeySchema("other")))
    with other.events(timeout=0.05) as theirs:
        publish_event(client, "admin", action="breaker_open", name="geo")
        assert received(theirs) == []


def test_close_from_another_thread_ends_an_iteration(client: taskguard.Client) -> None:
    stream = client.events()  # no timeout: it would wait for ever
    threading.Timer(0.05, stream.close).start()
    assert list(stream) == []
    assert stream.closed
    assert stream.get(timeout=1) is None


def test_a_stream_skips_messages_that_are_not_events(
    client: taskguard.Client, stream: EventStream, caplog: pytest.LogCaptureFixture
) -> None:
    from taskguard.events.transport import send

    send(client.backend, client.keys.events(), "hello")
    publish_event(client, "admin", action="breaker_reset", name="geo")
    assert [e.type for e in received(stream)] == ["admin"]
    assert "not an event" in caplog.text


# ---------------------------------------------------------------- signals -> events


def test_nothing_is_published_before_install(client: taskguard.Client, stream: EventStream) -> None:
    announce("geo", "closed", "open", "threshold")
    assert received(stream) == []


def test_breaker_transitions_are_published(
    installed: taskguard.Client, stream: EventStream
) -> None:
    breaker = installed.circuit_breaker("geo", consecutive_failures=1, open_for=10)
    with contextlib.suppress(ConnectionError):
        breaker.call(_refused)
    [event] = received(stream)
    assert event.type == "circuit_state_changed"
    assert event.fields == {
        "name": "geo",
        "old": "closed",
        "new": "open",
        "reason": "failure or slow-call threshold reached",
        "task_id": None,
    }


def _refused() -> None:
    raise ConnectionError("refused")


def test_a_guarded_task_that_trips_its_breaker_publishes_with_its_id(
    installed: taskguard.Client, stream: EventStream
) -> None:
    spec = CircuitBreaker("partner", consecutive_failures=1, open_for=30)
    with celery_app(installed.backend) as app:

        @app.task(shared=False, base=GuardedTask, guards=[spec])
        def call_partner() -> None:
            raise ValueError("502")

        with pytest.raises(ValueError, match="502"):
            run_as_worker(call_partner, task_id="t-7")
    [event] = received(stream)
    assert (event.type, event["name"], event["new"], event["task_id"]) == (
        "circuit_state_changed",
        "partner",
        "open",
        "t-7",
    )


def test_lease_lost_names_the_guard_and_the_task(
    installed: taskguard.Client, stream: EventStream
) -> None:
    key = installed.keys.lock("proj.render", "order:7")
    task = FakeTask("proj.render")
    signals.lease_lost.send(sender=task, task_id="t-1", key=key)
    [event] = received(stream)
    assert event.fields == {
        "key": key,
        "kind": "lock",
        "name": "proj.render",
        "task": "proj.render",
        "task_id": "t-1",
    }


def test_dead_letters_are_published_cut_to_size(
    installed: taskguard.Client, stream: EventStream
) -> None:
    keys = [str(n) for n in range(150)]
    signals.dead_lettered.send(
        sender=None, namespace="users", keys=keys, error="x" * 5000, attempts=5
    )
    [event] = received(stream)
    assert event["namespace"] == "users"
    assert event["keys"] == keys[:100]
    assert event["error"] == "x" * 1000
    assert event["attempts"] == 5


class FakeTask:
    """A signal's sender: hashable, like a task."""

    def __init__(self, name: str) -> None:
        self.name = name


@pytest.mark.parametrize(
    ("policy", "raised"), [("fail", DeferralExhausted), ("dead_letter", Ignore)]
)
def test_deferral_exhaustion_is_published_with_the_tasks_dead_letter_queue(
    installed: taskguard.Client, stream: EventStream, policy: str, raised: type[Exception]
) -> None:
    config = {"max_deferrals": 2, "on_deferral_exhausted": policy, "dead_letter_queue": "dlq.x"}
    with celery_app(installed.backend, **config) as app:

        @app.task(shared=False, base=GuardedTask, guards=[RateLimit("1/h")], name="proj.bill")
        def bill() -> None: ...

        run_as_worker(bill, task_id="t-1")  # spends the hour's token
        bill.push_request(
            id="t-2",
            called_directly=False,
            headers={HEADER_COUNT: 2, HEADER_SINCE: time.time() - 5},
            delivery_info={"exchange": "", "routing_key": app.conf.task_default_queue},
        )
        try:
            with pytest.raises(raised):
                bill()
        finally:
            bill.pop_request()
    [event] = received(stream)
    assert event.type == "deferral_exhausted"
    assert 5 <= event.fields.pop("age") < 60
    assert event.fields == {
        "task": "proj.bill",
        "task_id": "t-2",
        "deferrals": 2,
        "policy": policy,
        "dead_letter_queue": "dlq.x" if policy == "dead_letter" else None,
    }


def test_uninstall_stops_publishing(installed: taskguard.Client, stream: EventStream) -> None:
    assert events.installed() is installed.backend
    events.uninstall()
    announce("geo", "closed", "open", "threshold")
    assert received(stream) == []
    assert events.installed() is None


def test_a_failed_publish_never_raises_and_is_logged_throttled(
    installed: taskguard.Client,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def down(*args: Any) -> int:
        raise BackendUnavailable("redis unreachable during event publish")

    monkeypatch.setattr(publish_module, "send", down)
    monkeypatch.setattr(publish_module, "_failures", publish_module.Throttled(60.0))
    caplog.set_level(logging.WARNING, logger="taskguard.events")
    for _ in range(3):
        announce("geo", "closed", "open", "threshold")  # would raise into the caller
    assert not publish_event(installed, "admin", action="breaker_open", name="geo")
    lines = [r.getMessage() for r in caplog.records if r.name == "taskguard.events"]
    assert lines == [
        "events: a circuit_state_changed event of 'tg' was not published: "
        "redis unreachable during event publish"
    ]


def test_a_handler_given_odd_arguments_does_not_raise(installed: taskguard.Client) -> None:
    signals.dead_lettered.send(sender=None, namespace="users", keys=None, error=None, attempts=1)
    signals.lease_lost.send(sender=None, task_id=None, key="not a taskguard key")


# ---------------------------------------------------------------- setting and worker step


def test_the_events_setting_is_on_by_default_and_checked() -> None:
    assert EventsSettings.from_mapping({}).enabled
    assert EventsSettings.from_mapping({"events": None}).enabled
    assert not EventsSettings.from_mapping({"events": False}).enabled
    with pytest.raises(ConfigurationError, match=r"\[field 'events'\] must be true or false"):
        EventsSettings.from_mapping({"events": "off"})
    Settings.from_mapping({"events": False})  # a known global setting


def test_validate_checks_the_events_setting() -> None:
    app = Celery("unit-events", broker="memory://", set_as_current=False)
    app.conf.taskguard = {"redis_url": "memory://", "events": 1}
    with pytest.raises(ConfigurationError, match="'events'"):
        runtime_for(app).validate()
    app.close()


@pytest.mark.parametrize("enabled", [True, False])
def test_the_worker_step_installs_publishing_when_on(enabled: bool) -> None:
    app = Celery("unit-events", broker="memory://", set_as_current=False)
    app.conf.taskguard = {"redis_url": "memory://", "events": enabled}
    worker = SimpleNamespace(app=app)
    step = EventsStep(worker)
    try:
        assert step.include_if(worker) is enabled
        if enabled:
            step.create(worker)
            step.start(worker)  # what the blueprint calls next; publishing is on already
            assert events.installed() is runtime_for(app).backend
            step.stop(worker)
        assert events.installed() is None
    finally:
        events.uninstall()
        app.close()


# ---------------------------------------------------------------- the CLI's lines


def test_a_tail_line_shows_time_type_origin_and_set_fields() -> None:
    event = Event(
        "circuit_state_changed",
        1_700_000_000.5,
        "tg",
        "web-1",
        42,
        {"name": "partner-api", "old": "closed", "new": "open", "reason": "x y", "task_id": None},
    )
    assert render(event) == (
        "2023-11-14T22:13:20.500Z circuit_state_changed web-1[42] "
        'name=partner-api old=closed new=open reason="x y"'
    )
