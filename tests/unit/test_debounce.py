"""Debounce: of a burst of calls per key, only the newest runs, after the delay
(memory backend, fake clock; the fleet-wide proof is in tests/integration)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import Ignore

import taskguard
from taskguard import ConfigurationError, Debounce, GuardedTask
from taskguard.clock import FakeClock
from taskguard.guards.debounce import HEADER_DEBOUNCE

from .celery_harness import celery_app, of, published, recorded, run_as_worker


@pytest.fixture
def backend() -> taskguard.MemoryBackend:
    return taskguard.MemoryBackend(clock=FakeClock())


@pytest.fixture
def app(backend: taskguard.MemoryBackend) -> Iterator[Celery]:
    with celery_app(backend) as app:
        app.conf.result_backend = "cache+memory://"
        yield app


def arrive(task: Any, *args: Any, task_id: str) -> dict[str, Any]:
    """Deliver a call for the first time: it registers and is deferred by the delay."""
    with pytest.raises(Ignore):
        run_as_worker(task, *args, task_id=task_id)
    (message,) = published(task.app)
    assert message.headers["id"] == task_id
    return dict(message.headers)


def test_only_the_newest_call_runs_and_the_earlier_are_superseded(app: Celery) -> None:
    @app.task(shared=False, base=GuardedTask, guards=[Debounce(2.0, key="{doc}")])
    def reindex(doc: str, version: int) -> int:
        return version

    with recorded("task_deferred") as events:
        first = arrive(reindex, "d1", 1, task_id="a")
        second = arrive(reindex, "d1", 2, task_id="b")
    assert first[HEADER_DEBOUNCE] == "a"
    assert [e["delay"] for e in of(events, "task_deferred")] == [
        pytest.approx(2.0, abs=0.06),
        pytest.approx(2.0, abs=0.06),
    ]
    # "a" comes back: "b" is newer, so "a" ends unrun, its result saying so.
    with pytest.raises(Ignore, match="superseded by b"):
        run_as_worker(reindex, "d1", 1, task_id="a", headers=first)
    assert reindex.AsyncResult("a").state == "SUPERSEDED"
    assert reindex.AsyncResult("a").info == {"superseded_by": "b"}
    assert run_as_worker(reindex, "d1", 2, task_id="b", headers=second) == 2
    # A superseded call that comes back only after the winner ran is still dropped.
    with pytest.raises(Ignore, match="superseded by b"):
        run_as_worker(reindex, "d1", 1, task_id="a", headers=first)


def test_keys_debounce_independently_and_a_new_burst_starts_afresh(app: Celery) -> None:
    @app.task(shared=False, base=GuardedTask, guards=[Debounce(1.0, key="{doc}")])
    def reindex(doc: str) -> str:
        return doc

    one = arrive(reindex, "d1", task_id="a")
    two = arrive(reindex, "d2", task_id="b")
    assert run_as_worker(reindex, "d1", task_id="a", headers=one) == "d1"
    assert run_as_worker(reindex, "d2", task_id="b", headers=two) == "d2"
    again = arrive(reindex, "d1", task_id="c")  # after the run: a new burst
    assert run_as_worker(reindex, "d1", task_id="c", headers=again) == "d1"


def test_eager_calls_run_at_once(app: Celery) -> None:
    @app.task(shared=False, base=GuardedTask, guards=[Debounce(5.0)])
    def refresh() -> str:
        return "done"

    assert refresh.apply().get() == "done"


def test_bad_options_name_the_field() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Debounce(0)
    assert caught.value.field == "delay"
    assert repr(Debounce(2, key="{doc}", name="idx")) == "Debounce(2.0, key='{doc}', name='idx')"
