"""Shadow mode: guards evaluated and counted, never enforced (memory backend, fake clock)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

import taskguard
from taskguard import CircuitBreaker, Concurrency, ConfigurationError, GuardedTask, Lock, RateLimit
from taskguard.backend.ops import SlotOp
from taskguard.clock import FakeClock

from .celery_harness import celery_app, of, published, recorded, run_as_worker

SIGNALS = ("shadow_denied", "guard_denied", "task_deferred")


@pytest.fixture
def backend() -> taskguard.MemoryBackend:
    return taskguard.MemoryBackend(clock=FakeClock())


@pytest.fixture
def app(backend: taskguard.MemoryBackend) -> Iterator[Celery]:
    with celery_app(backend) as app:
        yield app


@pytest.fixture
def events() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    with recorded(*SIGNALS) as seen:
        yield seen


def test_a_shadow_limit_counts_what_it_would_refuse_and_the_task_runs(
    app: Celery, backend: taskguard.MemoryBackend, events: list[Any]
) -> None:
    @app.task(shared=False, base=GuardedTask, shadow_guards=[RateLimit("1/m")])
    def send() -> str:
        return "sent"

    assert run_as_worker(send, task_id="a") == "sent"
    assert run_as_worker(send, task_id="b") == "sent"  # over the limit: runs all the same
    [denied] = of(events, "shadow_denied")
    assert denied["task_id"] == "b"
    assert denied["key"] == backend.keys.rate_limit(send.name)
    assert denied["retry_after"] == pytest.approx(60, abs=1)
    assert of(events, "guard_denied") == []
    assert of(events, "task_deferred") == []
    assert published(app) == []
    # A refusal charged nothing (as if the task had been deferred): the bucket's next
    # token is still one interval after the first run's.
    backend.clock.advance(60)  # type: ignore[attr-defined]
    assert run_as_worker(send, task_id="c") == "sent"
    assert len(of(events, "shadow_denied")) == 1


def test_the_shadow_setting_moves_a_kind_out_of_enforcement(app: Celery, events: list[Any]) -> None:
    @app.task(shared=False, base=GuardedTask, guards=[RateLimit("1/m"), Concurrency(5)])
    def send() -> str:
        return "sent"

    app.conf.taskguard = {**app.conf.taskguard, "tasks": {send.name: {"shadow": ["rate_limit"]}}}
    config = send.taskguard_settings
    assert [g.kind for g in config.guards] == ["concurrency"]
    assert [g.kind for g in config.shadow] == ["rate_limit"]
    assert [run_as_worker(send, task_id=t) for t in "ab"] == ["sent", "sent"]
    assert [e["task_id"] for e in of(events, "shadow_denied")] == ["b"]


def test_a_shadow_cap_holds_its_slot_for_the_run_and_gives_it_back(
    app: Celery, backend: taskguard.MemoryBackend, events: list[Any]
) -> None:
    @app.task(shared=False, base=GuardedTask, bind=True, shadow_guards=[Concurrency(1)])
    def job(self: Any, inner: bool) -> str:
        if inner:
            return "inner"
        # A second run while this one holds the shadow slot: it would be refused.
        return run_as_worker(self, True, task_id="inner")

    assert run_as_worker(job, False, task_id="outer") == "inner"
    assert [e["task_id"] for e in of(events, "shadow_denied")] == ["inner"]
    probe = SlotOp(backend.keys.slots(job.name), owner="probe", ttl=5, limit=1)
    assert backend.admit([probe]).allowed  # the outer run's shadow slot was released


@pytest.mark.parametrize(
    ("entry", "shadow_guards", "message"),
    [
        ({"shadow": ["circuit_breaker"]}, [], "cannot put 'circuit_breaker' in shadow mode"),
        ({"shadow": ["nope"]}, [], "cannot put 'nope' in shadow mode"),
        ({"shadow": "rate_limit"}, [], "must be a list of guard kinds"),
        ({}, [CircuitBreaker("partner", failure_rate=0.5)], "cannot run in shadow mode"),
        ({}, [Lock(mode="until_executed")], "cannot run in shadow mode"),
    ],
)
def test_what_cannot_be_shadowed_is_refused_naming_the_task(
    app: Celery, entry: dict, shadow_guards: list, message: str
) -> None:
    @app.task(shared=False, base=GuardedTask, shadow_guards=shadow_guards)
    def job() -> None: ...

    app.conf.taskguard = {**app.conf.taskguard, "tasks": {job.name: entry}}
    with pytest.raises(ConfigurationError, match=message) as caught:
        job.taskguard_settings  # noqa: B018
    assert caught.value.task == job.name
    assert caught.value.field == "shadow"
