"""Uniqueness tasks, published through their own ``apply_async`` by the test process.

Configured from the environment like ``guarded.py``; imported both by the workers and by
the test (which must publish through GuardedTask.apply_async for publish-time claims).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

from taskguard import GuardedTask, Lock, signals

from .guarded import BROKER, PREFIX, RESULTS, record

app = Celery("unique", broker=BROKER, backend=RESULTS, set_as_current=False)
app.conf.update(task_default_queue=os.environ["TG_QUEUE"], result_expires=600)
app.conf.taskguard = {"key_prefix": PREFIX}


def _run(task: Any, key: str, seconds: float) -> str:
    record("runs", id=task.request.id, name=task.name, key=key, phase="start")
    time.sleep(seconds)  # the task's work: it runs (and holds its lock) this long
    record("runs", id=task.request.id, name=task.name, key=key, phase="end")
    return task.request.id


@app.task(
    shared=False, bind=True, base=GuardedTask, guards=[Lock(key="{key}", mode="until_executing")]
)
def until_executing(self: Any, key: str, seconds: float = 0.0) -> str:
    return _run(self, key, seconds)


@app.task(
    shared=False, bind=True, base=GuardedTask, guards=[Lock(key="{key}", mode="until_executed")]
)
def until_executed(self: Any, key: str, seconds: float = 0.0) -> str:
    return _run(self, key, seconds)


@app.task(
    shared=False,
    bind=True,
    base=GuardedTask,
    guards=[Lock(key="{key}", mode="until_executing+while_executing", wait=10)],
)
def both(self: Any, key: str, seconds: float = 0.0) -> str:
    return _run(self, key, seconds)


@app.task(
    shared=False,
    bind=True,
    base=GuardedTask,
    guards=[Lock(key="{key}", mode="until_executed", on_duplicate="raise")],
)
def strict(self: Any, key: str, seconds: float = 0.0) -> str:
    return _run(self, key, seconds)


def _on_duplicate(sender: Any = None, task_id: str = "", **kwargs: Any) -> None:
    record("duplicates", id=task_id, holder=kwargs["holder"], stage=kwargs["stage"])


signals.duplicate_rejected.connect(_on_duplicate, weak=False)
