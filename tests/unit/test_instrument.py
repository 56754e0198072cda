"""The instrumentation hook layer: idle by default, activities reach installed hooks, and
a failing hook never reaches the work it watches."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import Ignore

from taskguard import Concurrency, GuardedTask, Lock, RateLimit, _instrument
from taskguard.backend.memory import MemoryBackend

from .celery_harness import celery_app, run_as_worker


class Recorder(_instrument.Hook):
    """Records (op, data, duration, error) of every finished activity."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.finished: list[tuple[str, dict[str, Any], float, BaseException | None]] = []

    def start(self, activity: _instrument.Activity) -> Any:
        self.started.append(activity.op)
        return activity.op

    def finish(
        self, activity: _instrument.Activity, state: Any, error: BaseException | None
    ) -> None:
        assert state == activity.op
        self.finished.append((activity.op, dict(activity.data), activity.duration, error))

    def of(self, op: str) -> list[dict[str, Any]]:
        return [data for seen, data, _, _ in self.finished if seen == op]


@pytest.fixture(autouse=True)
def no_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start without hooks (an integration set up earlier in the process stays put)."""
    monkeypatch.setattr(_instrument, "_hooks", ())
    monkeypatch.setattr(_instrument, "on", False)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    hook = _instrument.install(Recorder())
    try:
        yield hook  # type: ignore[misc]
    finally:
        _instrument.uninstall(hook)


def test_without_hooks_an_activity_is_one_shared_idle_object() -> None:
    assert _instrument.hooks() == ()
    assert _instrument.on is False
    first = _instrument.activity(_instrument.ADMIT, task="t")
    with first as act:
        act.note(decision="allowed")
    assert first is _instrument.activity(_instrument.CACHE_GET) is _instrument.IDLE
    assert first.data == {}
    assert first.on is False


def test_an_installed_hook_sees_start_data_notes_duration_and_error(recorder: Recorder) -> None:
    with _instrument.activity("op", a=1) as act:
        act.note(b=2)
    with pytest.raises(ValueError, match="boom"), _instrument.activity("failing"):
        raise ValueError("boom")
    assert recorder.started == ["op", "failing"]
    (op, data, duration, error), (failing, _, _, raised) = recorder.finished
    assert (op, data, error) == ("op", {"a": 1, "b": 2}, None)
    assert duration >= 0
    assert failing == "failing"
    assert isinstance(raised, ValueError)


def test_install_is_idempotent_and_uninstall_removes() -> None:
    hook = _instrument.Hook()
    _instrument.install(hook)
    _instrument.install(hook)
    assert _instrument.hooks() == (hook,)
    assert _instrument.on is True
    with _instrument.activity("op") as act:
        assert act.on is True
    _instrument.uninstall(hook)
    _instrument.uninstall(hook)
    assert _instrument.hooks() == ()
    assert _instrument.on is False


def test_a_failing_hook_is_logged_and_the_work_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(_instrument.Hook):
        def start(self, activity: _instrument.Activity) -> Any:
            raise RuntimeError("start")

        def finish(
            self, activity: _instrument.Activity, state: Any, error: BaseException | None
        ) -> None:
            raise RuntimeError("finish")

    hook = _instrument.install(Broken())
    try:
        with (
            caplog.at_level(logging.ERROR, "taskguard.instrument"),
            _instrument.activity("op") as act,
        ):
            act.note(x=1)
            result = 42
    finally:
        _instrument.uninstall(hook)
    assert result == 42
    assert len([r for r in caplog.records if "hook" in r.getMessage()]) == 2


# ---------------------------------------------------------------- a task run's activities


@pytest.fixture
def app(backend: MemoryBackend) -> Iterator[Celery]:
    with celery_app(backend) as app:
        yield app


def test_a_run_that_holds_nothing_reports_no_release(app: Celery, recorder: Recorder) -> None:
    """Rate limits spend tokens and hold nothing: no release call, so no release span."""

    @app.task(base=GuardedTask, guards=[RateLimit("10/s")], shared=False)
    def work() -> str:
        return "done"

    assert run_as_worker(work) == "done"
    assert [op for op, *_ in recorder.finished] == ["taskguard.admit"]


def test_an_admitted_run_reports_admit_then_release(app: Celery, recorder: Recorder) -> None:
    @app.task(base=GuardedTask, guards=[RateLimit("10/s"), Concurrency(2)], shared=False)
    def work() -> str:
        return "done"

    assert run_as_worker(work) == "done"
    assert [op for op, *_ in recorder.finished] == ["taskguard.admit", "taskguard.release"]
    (admit,) = recorder.of("taskguard.admit")
    assert admit["task"] == work.name
    assert admit["task_id"] == "tid-1"
    assert sorted(g.kind for g in admit["guards"]) == ["concurrency", "rate_limit"]
    assert admit["decision"] == "allowed"
    assert admit["degraded"] is False
    assert admit["deferrals"] == 0
    (release,) = recorder.of("taskguard.release")
    assert (release["outcome"], release["lost"]) == ("success", 0)


def test_a_deferred_run_reports_the_refusing_guard_and_the_publish(
    app: Celery, recorder: Recorder
) -> None:
    @app.task(base=GuardedTask, guards=[RateLimit("1/m")], shared=False)
    def limited() -> None:
        return None

    run_as_worker(limited, task_id="a")
    with pytest.raises(Ignore):
        run_as_worker(limited, task_id="b")
    denied = recorder.of("taskguard.admit")[1]
    assert denied["decision"] == "deferred"
    assert denied["guard"].kind == "rate_limit"
    assert denied["retry_after"] > 0
    (publish,) = recorder.of("queue.publish")
    assert publish["message_id"] == "b"
    assert publish["destination"] == app.conf.task_default_queue + ".deferred"  # its lane
    assert publish["kind"] == "deferral"
    assert (publish["deferrals"], publish["cause"]) == (1, "rate_limit")


def test_a_held_lock_skipped_reports_skipped(app: Celery, recorder: Recorder) -> None:
    @app.task(base=GuardedTask, guards=[Lock(on_conflict="skip")], shared=False)
    def exclusive() -> None:
        with pytest.raises(Ignore):
            run_as_worker(exclusive, task_id="inner")

    run_as_worker(exclusive, task_id="outer")
    decisions = [d["decision"] for d in recorder.of("taskguard.admit")]
    assert sorted(decisions) == ["allowed", "skipped"]
