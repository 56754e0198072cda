"""A worker app whose tasks make guard events, with the ``events`` setting at its default.

Configured like guarded.py (``TG_BROKER_URL``, ``TG_PREFIX``, ``TG_QUEUE``,
``TG_SETTINGS``): ``partner`` fails, so its breaker opens after two runs; ``capped`` has
one run an hour, so a second run is refused and, with ``max_deferrals: 0`` in the
settings, exhausts its deferral cap at once.
"""

from __future__ import annotations

import json
import os

from celery import Celery

from taskguard import CircuitBreaker, GuardedTask, RateLimit

BROKER = os.environ["TG_BROKER_URL"]

app = Celery("evented", broker=BROKER, backend=BROKER, set_as_current=False)
app.conf.update(
    task_default_queue=os.environ["TG_QUEUE"],
    result_expires=600,
    broker_connection_retry_on_startup=True,
)
app.conf.taskguard = {
    "key_prefix": os.environ["TG_PREFIX"],
    **json.loads(os.environ.get("TG_SETTINGS", "{}")),
}


@app.task(
    shared=False,
    base=GuardedTask,
    guards=[CircuitBreaker("ev-partner", consecutive_failures=2, open_for=60, on_open="fail")],
)
def partner(i: int) -> int:
    raise RuntimeError(f"partner down ({i})")


@app.task(shared=False, base=GuardedTask, guards=[RateLimit("1/h")])
def capped(i: int) -> int:
    return i
