"""Task uniqueness in one process: publish-time claims and their run-time half.

``apply_async`` claims the key with the message's id; a second publish gets the queued
task's AsyncResult (or AlreadyQueued). A message that bypassed the claim (``send_task``)
is rejected when it runs. The claim ends when the run starts (``until_executing``) or ends
(``until_executed``).
"""

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import Ignore
from kombu.exceptions import KombuError

import taskguard
from taskguard import AlreadyQueued, BackendUnavailable, GuardedTask, Lock
from taskguard.clock import FakeClock
from taskguard.heartbeat import heartbeat_for

from .celery_harness import DEAD_URL, celery_app, of, published, recorded, run_as_worker


@pytest.fixture
def backend() -> taskguard.MemoryBackend:
    return taskguard.MemoryBackend(clock=FakeClock())


@pytest.fixture
def app(backend: taskguard.MemoryBackend) -> Iterator[Celery]:
    with celery_app(backend) as app:
        yield app


@pytest.fixture
def events() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    with recorded("duplicate_rejected", "task_deferred") as seen:
        yield seen


def unique_task(app: Celery, backend: taskguard.Backend, mode: str, **options: Any) -> Any:
    """A task recording who held its claim while it ran."""
    seen: list[str | None] = []

    @app.task(shared=False, base=GuardedTask, guards=[Lock(key="{n}", mode=mode, **options)])
    def job(n: int) -> list[str | None]:
        seen.append(backend.owner(backend.keys.unique(job.name, str(n))))
        return seen

    return job


def claim_owner(backend: taskguard.Backend, task: Any, n: int) -> str | None:
    return backend.owner(backend.keys.unique(task.name, str(n)))


def test_duplicate_publish_returns_the_queued_task(
    app: Celery, backend: taskguard.MemoryBackend, events: list[Any]
) -> None:
    job = unique_task(app, backend, "until_executing")
    first = job.apply_async((1,))
    again = job.apply_async((1,))
    other = job.delay(2)
    assert again.id == first.id
    assert other.id != first.id
    assert sorted(m.headers["id"] for m in published(app)) == sorted([first.id, other.id])
    assert claim_owner(backend, job, 1) == first.id
    [rejected] = of(events, "duplicate_rejected")
    assert (rejected["stage"], rejected["holder"]) == ("publish", first.id)
    assert rejected["task_id"] not in (first.id, other.id)


def test_on_duplicate_raise(app: Celery, backend: taskguard.MemoryBackend) -> None:
    job = unique_task(app, backend, "until_executed", on_duplicate="raise")
    first = job.apply_async((1,))
    with pytest.raises(AlreadyQueued) as info:
        job.apply_async((1,))
    assert info.value.task_id == first.id
    assert info.value.key == backend.keys.unique(job.name, "1")
    assert len(published(app)) == 1


def test_a_message_that_bypassed_the_claim_is_skipped_at_run(
    app: Celery, backend: taskguard.MemoryBackend, events: list[Any]
) -> None:
    job = unique_task(app, backend, "until_executing")
    first = job.apply_async((1,))
    bypass = app.send_task(job.name, args=(1,))  # send_task does not claim
    assert len(published(app)) == 2
    with pytest.raises(Ignore, match="duplicate"):
        run_as_worker(job, 1, task_id=bypass.id)
    rejected = [e for e in of(events, "duplicate_rejected") if e["stage"] == "run"]
    assert [(e["task_id"], e["holder"]) for e in rejected] == [(bypass.id, first.id)]
    assert claim_owner(backend, job, 1) == first.id  # the rightful message keeps it
    assert of(events, "task_deferred") == []  # skipped, not deferred
    assert run_as_worker(job, 1, task_id=first.id) == [None]


def test_until_executing_frees_the_key_when_the_run_starts(
    app: Celery, backend: taskguard.MemoryBackend
) -> None:
    job = unique_task(app, backend, "until_executing")
    first = job.apply_async((1,))
    published(app)
    assert run_as_worker(job, 1, task_id=first.id) == [None]  # claim gone during the run
    second = job.apply_async((1,))
    assert second.id != first.id
    assert len(published(app)) == 1


def test_until_executed_keeps_the_key_until_the_run_ends(
    app: Celery, backend: taskguard.MemoryBackend
) -> None:
    during: list[str] = []

    @app.task(shared=False, base=GuardedTask, guards=[Lock(key="{n}", mode="until_executed")])
    def job(n: int) -> str | None:
        during.append(job.apply_async((n,)).id)  # a duplicate published mid-run
        return claim_owner(backend, job, n)

    first = job.apply_async((1,))
    published(app)
    assert run_as_worker(job, 1, task_id=first.id) == first.id
    assert during == [first.id]
    assert published(app) == []  # the mid-run duplicate was not published
    assert claim_owner(backend, job, 1) is None
    assert len(heartbeat_for(backend)) == 0


def test_until_executed_claim_is_released_on_failure(
    app: Celery, backend: taskguard.MemoryBackend
) -> None:
    @app.task(shared=False, base=GuardedTask, guards=[Lock(key="{n}", mode="until_executed")])
    def job(n: int) -> None:
        raise ValueError("boom")

    first = job.apply_async((1,))
    with pytest.raises(ValueError, match="boom"):
        run_as_worker(job, 1, task_id=first.id)
    assert claim_owner(backend, job, 1) is None


def test_a_failed_publish_releases_the_claim(app: Celery, backend: taskguard.MemoryBackend) -> None:
    job = unique_task(app, backend, "until_executing")
    with pytest.raises(KombuError):
        job.apply_async((1,), serializer="no-such-serializer")
    assert claim_owner(backend, job, 1) is None
    assert published(app) == []
    result = job.apply_async((1,))
    assert claim_owner(backend, job, 1) == result.id


def test_claim_and_run_lock_together(app: Celery, backend: taskguard.MemoryBackend) -> None:
    mode = "until_executing+while_executing"

    @app.task(shared=False, base=GuardedTask, bind=True, guards=[Lock(key="{n}", mode=mode)])
    def job(self: Any, n: int) -> tuple[str | None, Any]:
        return claim_owner(backend, job, n), self.request.taskguard.fencing_token

    first = job.apply_async((1,))
    owner, token = run_as_worker(job, 1, task_id=first.id)
    assert owner is None
    assert token > 0
    assert backend.owner(backend.keys.lock(job.name, "1")) is None


# ---------------------------------------------------------------- Redis outage


@pytest.fixture
def dead_app() -> Iterator[Celery]:
    with celery_app(taskguard.connect(DEAD_URL).backend) as app:
        yield app


def test_outage_deny_refuses_to_publish(dead_app: Celery) -> None:
    @dead_app.task(shared=False, base=GuardedTask, guards=[Lock(key="{n}", mode="until_executed")])
    def job(n: int) -> None: ...

    with pytest.raises(BackendUnavailable):
        job.apply_async((1,))
    assert published(dead_app) == []


def test_outage_allow_publishes_unchecked(dead_app: Celery) -> None:
    guards = [Lock(key="{n}", mode="until_executed", on_outage="allow")]

    @dead_app.task(shared=False, base=GuardedTask, guards=guards)
    def job(n: int) -> None: ...

    result = job.apply_async((1,))
    [message] = published(dead_app)
    assert message.headers["id"] == result.id


def test_outage_defers_a_unique_task_at_run(dead_app: Celery, events: list[Any]) -> None:
    @dead_app.task(shared=False, base=GuardedTask, guards=[Lock(key="{n}", mode="until_executing")])
    def job(n: int) -> None:
        raise AssertionError("must not run unchecked")

    with pytest.raises(Ignore):
        run_as_worker(job, 1)
    [message] = published(dead_app)
    assert message.headers["id"] == "tid-1"
