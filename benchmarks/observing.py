"""Sentry and Prometheus on in a benchmark worker (``TG_BENCH_OBSERVED=1``).

Sentry is initialised as a user would, with its Celery integration and taskguard's, every
transaction sampled (``traces_sample_rate=1.0``); its transport keeps nothing and sends
nothing, and only counts the envelopes it is handed, adding every hundredth to the Redis
counter ``<prefix>:sentry-envelopes`` so the benchmark can check Sentry was really on.
Prometheus is the worker's ``metrics`` setting (multiprocess mode, a free port).
"""

from __future__ import annotations

import os
from typing import Any

import redis
import sentry_sdk
from celery import Celery
from sentry_sdk.envelope import Envelope
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.transport import Transport

from taskguard.sentry import TaskguardIntegration

__all__ = ["ENVELOPES_KEY", "observe"]

DSN = "https://public@example.invalid/1"
ENVELOPES_KEY = "{prefix}:sentry-envelopes"
#: Envelopes counted in the process before one INCRBY reports them.
REPORT_EVERY = 100


class _Counting(Transport):  # type: ignore[misc]
    counter_url = ""
    counter_key = ""

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.pending = 0
        self.client: redis.Redis | None = None
        self.pid = os.getpid()

    def capture_envelope(self, envelope: Envelope) -> None:
        self.pending += 1
        if self.pending >= REPORT_EVERY:
            if self.client is None or self.pid != os.getpid():  # one client per process
                self.client, self.pid = redis.Redis.from_url(self.counter_url), os.getpid()
            self.client.incrby(self.counter_key, self.pending)
            self.pending = 0

    def flush(self, timeout: float, callback: Any = None) -> None:
        pass


def observe(app: Celery, *, prefix: str, counter_url: str) -> None:
    """Turn Sentry (every transaction) and the worker's Prometheus endpoint on."""
    _Counting.counter_url = counter_url
    _Counting.counter_key = ENVELOPES_KEY.format(prefix=prefix)
    sentry_sdk.init(
        dsn=DSN,
        transport=_Counting,
        traces_sample_rate=1.0,
        default_integrations=False,
        auto_enabling_integrations=False,
        integrations=[CeleryIntegration(), TaskguardIntegration()],
    )
    app.conf.taskguard = {**app.conf.taskguard, "metrics": {"port": 0, "address": "127.0.0.1"}}
