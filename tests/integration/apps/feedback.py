"""A task that hears back from its downstream service: one call gets a 429 and pauses the
shared rate limit for the fleet (issue 16 part 3).

Configured from the environment like :mod:`tests.integration.apps.guarded`
(``TG_BROKER_URL``, ``TG_RESULT_URL`` (defaults to the broker), ``TASKGUARD_REDIS_URL``,
``TG_PREFIX``, ``TG_QUEUE``, ``TG_SETTINGS``). Every start of the body is recorded in
``<prefix>:starts`` and every finished run in ``<prefix>:runs``, stamped with Redis
server time; a pause is recorded in ``<prefix>:paused`` with the server time just before
and just after the call that set it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery

from taskguard import GuardedTask, RateLimit

BROKER = os.environ["TG_BROKER_URL"]
RESULTS = os.environ.get("TG_RESULT_URL", BROKER)
PREFIX = os.environ["TG_PREFIX"]

app = Celery("feedback", broker=BROKER, backend=RESULTS, set_as_current=False)
app.conf.update(
    task_default_queue=os.environ["TG_QUEUE"],
    result_expires=600,
    broker_connection_retry_on_startup=True,
)
app.conf.taskguard = {"key_prefix": PREFIX, **json.loads(os.environ.get("TG_SETTINGS", "{}"))}

_records = redis.Redis.from_url(RESULTS)

#: The partner's API, 10 calls a second per customer, shared by every worker.
PARTNER = RateLimit("10/s", key="{customer}", name="partner-api")


def _now() -> float:
    seconds, micros = _records.time()
    return float(seconds + micros / 1e6)


def _record(stream: str, task: Any, **fields: Any) -> None:
    request = task.request
    _records.rpush(
        f"{PREFIX}:{stream}",
        json.dumps(
            {
                "id": request.id,
                "retries": request.retries,
                "deferrals": (request.headers or {}).get("taskguard-deferrals", 0),
                "pid": os.getpid(),
                "worker": request.hostname,
                **fields,
            }
        ),
    )


@app.task(shared=False, bind=True, base=GuardedTask, guards=[PARTNER])
def call(self: Any, customer: str, i: int, retry_after: float = 0.0) -> int:
    """Call the partner for ``customer``; with ``retry_after`` the first attempt gets a 429
    with that ``Retry-After`` and pauses the customer's bucket for everyone."""
    start = _now()
    _record("starts", self, customer=customer, i=i, start=start)
    first_attempt = not (self.request.headers or {}).get("taskguard-deferrals")
    if retry_after and first_attempt:
        before = _now()
        self.taskguard.pause("partner-api", seconds=retry_after)
        _record("paused", self, customer=customer, before=before, after=_now(), seconds=retry_after)
        self.taskguard.defer()
    _record("runs", self, customer=customer, i=i, start=start)
    return i
