"""Tasks calling a local HTTP stub through fleet-wide circuit breakers.

Configured from the environment like ``guarded.py`` (same recording helpers).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from typing import Any

from celery import Celery

from taskguard import CircuitBreaker, GuardedTask, signals

from .guarded import BROKER, PREFIX, RESULTS, record

app = Celery("breakers", broker=BROKER, backend=RESULTS, set_as_current=False)
app.conf.update(task_default_queue=os.environ["TG_QUEUE"], result_expires=600)
app.conf.taskguard = {"key_prefix": PREFIX, "deferral_jitter": 0.05}


class PartnerDown(Exception):
    """The stub answered with an error."""


class Ignorable(Exception):
    """An error the cb-filter breaker is told to ignore."""


def _get(url: str, error: type[Exception] = PartnerDown) -> str:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as exc:
        raise error(f"stub answered {exc.code}") from None


def _seen(task: Any) -> None:
    headers = task.request.headers or {}
    record(
        "runs",
        id=task.request.id,
        name=task.name,
        worker=task.request.hostname,
        retries=task.request.retries,
        deferrals=headers.get("taskguard-deferrals", 0),
    )


TRIP = CircuitBreaker(
    "cb-trip",
    window=10,
    minimum_calls=4,
    failure_rate=0.5,
    open_for=2,
    open_growth=2,
    half_open_probes=2,
    successes_to_close=2,
)


@app.task(shared=False, bind=True, base=GuardedTask, guards=[TRIP])
def call_partner(self: Any, url: str) -> str:
    _seen(self)
    return _get(f"{url}/?task={self.request.id}")  # the stub logs which task called


@app.task(
    shared=False,
    bind=True,
    base=GuardedTask,
    guards=[CircuitBreaker("cb-crash", consecutive_failures=1, open_for=1, probe_ttl=3)],
)
def call_partner_crashable(self: Any, url: str) -> str:
    _seen(self)
    return _get(url)


@app.task(
    shared=False,
    bind=True,
    base=GuardedTask,
    guards=[
        CircuitBreaker(
            "cb-slow",
            window=4,
            minimum_calls=4,
            failure_rate=1.0,
            slow_call_rate=0.5,
            slow_call_duration=0.2,
            open_for=30,
        )
    ],
)
def call_partner_slow(self: Any, url: str) -> str:
    _seen(self)
    return _get(url)


@app.task(
    shared=False,
    bind=True,
    base=GuardedTask,
    guards=[
        CircuitBreaker(
            "cb-filter", consecutive_failures=2, open_for=30, ignore_exceptions=(Ignorable,)
        )
    ],
)
def call_partner_filtered(self: Any, url: str, ignorable: bool) -> str:
    _seen(self)
    return _get(url, Ignorable if ignorable else PartnerDown)


def _on_state(sender: Any = None, **kwargs: Any) -> None:
    record("transitions", name=kwargs["name"], old=kwargs["old"], new=kwargs["new"])


signals.circuit_state_changed.connect(_on_state, weak=False)
