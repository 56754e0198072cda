"""Running GuardedTasks in the test process: an app on kombu's memory broker, a worker-like
call, the messages it published, and the taskguard signals it sent."""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery

from taskguard import Backend, signals
from taskguard.celery._parking import lane_name
from taskguard.celery._runtime import runtime_for
from taskguard.heartbeat import heartbeat_for

DEAD_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connections are refused


@contextmanager
def celery_app(backend: Backend, **config: Any) -> Iterator[Celery]:
    """An app whose guard state is ``backend``; its heartbeat is stopped afterwards."""
    app = Celery("unit", broker="memory://", set_as_current=False)
    # kombu's memory transport is process-wide: a queue per test keeps tests apart.
    app.conf.task_default_queue = f"unit-{uuid.uuid4().hex[:8]}"
    app.conf.taskguard = {"deferral_jitter": 0, **config}
    runtime_for(app).backend = backend
    try:
        yield app
    finally:
        heartbeat_for(backend).stop()
        app.close()


def run_as_worker(
    task: Any,
    *args: Any,
    task_id: str = "tid-1",
    headers: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Call the task the way the worker's tracer does: request pushed (with the message's
    ``headers``), not called directly."""
    task.push_request(
        id=task_id,
        args=args,
        kwargs=kwargs,
        called_directly=False,
        is_eager=False,
        headers=headers,
        retries=0,
        delivery_info={"exchange": "", "routing_key": task.app.conf.task_default_queue},
    )
    try:
        return task(*args, **kwargs)
    finally:
        task.pop_request()


def published(app: Celery, queue: str | None = None) -> list[Any]:
    """Take every message waiting in ``queue`` (default: the app's) and its deferral lane."""
    queue = queue or app.conf.task_default_queue
    messages = []
    with app.connection_for_read() as conn:
        for name in dict.fromkeys((queue, lane_name(queue))):
            simple = conn.SimpleQueue(name)
            while True:
                try:
                    message = simple.get(block=False)
                except simple.Empty:
                    break
                message.ack()
                messages.append(message)
            simple.close()
    return messages


@contextmanager
def recorded(*names: str) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Record the named taskguard signals as (name, kwargs)."""
    seen: list[tuple[str, dict[str, Any]]] = []
    receivers = {}
    for name in names:

        def receiver(sender: Any = None, _name: str = name, **kwargs: Any) -> None:
            seen.append((_name, kwargs))

        receivers[name] = receiver
        getattr(signals, name).connect(receiver, weak=False)
    try:
        yield seen
    finally:
        for name, receiver in receivers.items():
            getattr(signals, name).disconnect(receiver)


def of(events: list[tuple[str, dict[str, Any]]], name: str) -> list[dict[str, Any]]:
    """The kwargs of every recorded ``name`` signal."""
    return [kwargs for seen, kwargs in events if seen == name]
