"""The circuit-breaker stage: the fleet calls a partner that fails for a while, then recovers.

A steady stream of tasks (:data:`CALLS_PER_SECOND`) calls the partner stub through one
:class:`~taskguard.guards.CircuitBreaker` shared by every worker. The stub is healthy for
:data:`HEALTHY_FOR` seconds, then fails every call until the breaker has opened and
:data:`RECOVER_AFTER` more seconds have passed; the stream goes on for :data:`RUN_ON_FOR`
seconds after the breaker closed again. Then every published task must have ended.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis

from .breaker_report import BreakerResult
from .config import BREAKER_STAGE, DemoConfig
from .partner import PartnerCall, PartnerStub
from .stages import DemoError, _fleet
from .tasks import BREAKER_TASK

__all__ = ["BREAKER_TITLE", "CALLS_PER_SECOND", "run_breaker_stage"]

BREAKER_TITLE = "Circuit breaker: a failing partner, one breaker for the whole fleet"

#: Tasks published per second, each one call to the partner.
CALLS_PER_SECOND = 20
#: Seconds of healthy calls before the stub starts failing.
HEALTHY_FOR = 3.0
#: Seconds after the breaker opened (open_for is 2 s) at which the stub recovers: the
#: breaker does not know, and keeps the fleet away until its probe finds out.
RECOVER_AFTER = 1.0
#: Seconds the stream goes on after the breaker closed.
RUN_ON_FOR = 3.0
#: Seconds to wait for the breaker to open once the stub fails, or to close once it
#: recovered, before the stage gives up (and its verdict says what did not happen).
TRANSITION_TIMEOUT = 8.0
#: Seconds to wait, after the stream stopped, for every published task to end.
DRAIN_TIMEOUT = 15.0
TICK = 0.02

Echo = Callable[..., None]


def _clock_offset(client: redis.Redis) -> float:
    """Redis ``TIME`` minus this process's ``time.time()`` (best of three round trips)."""
    samples = []
    for _ in range(3):
        before = time.time()
        seconds, micros = client.time()
        after = time.time()
        samples.append((after - before, seconds + micros / 1e6 - (before + after) / 2))
    return min(samples)[1]


def _records(client: redis.Redis, key: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(key, 0, -1)]


def _transition(records: list[dict[str, Any]], old: str, new: str) -> dict[str, Any] | None:
    return next((r for r in records if (r["old"], r["new"]) == (old, new)), None)


class _Script:
    """The stub's health over the stage, driven by the breaker's transitions."""

    def __init__(self, stub: PartnerStub, offset: float, start: float) -> None:
        self.stub = stub
        self.offset = offset  # local time + offset = Redis time
        self.phase = "healthy"
        self.due = start + HEALTHY_FOR  # local time of the next step
        self.switches: list[tuple[float, bool]] = []

    def _switch(self, healthy: bool) -> None:
        self.switches.append((self.stub.set_healthy(healthy) + self.offset, healthy))

    def step(self, now: float, transitions: list[dict[str, Any]]) -> bool:
        """Advance; False once the stream should stop."""
        if self.phase == "healthy" and now >= self.due:
            self._switch(False)
            self.phase, self.due = "failing", now + TRANSITION_TIMEOUT
        elif self.phase == "failing":
            opened = _transition(transitions, "closed", "open")
            if opened is not None:
                self.phase, self.due = "open", opened["t"] - self.offset + RECOVER_AFTER
            elif now >= self.due:
                self._switch(True)
                return False
        elif self.phase == "open" and now >= self.due:
            self._switch(True)
            self.phase, self.due = "recovered", now + TRANSITION_TIMEOUT
        elif self.phase == "recovered":
            closed = _transition(transitions, "half_open", "closed")
            if closed is not None:
                self.phase, self.due = "closed", closed["t"] - self.offset + RUN_ON_FOR
            elif now >= self.due:
                return False
        elif self.phase == "closed" and now >= self.due:
            return False
        return True


def _ended(client: redis.Redis, config: DemoConfig) -> set[str]:
    runs = _records(client, config.starts_key(BREAKER_STAGE))
    failures = _records(client, config.failures_key(BREAKER_STAGE))
    return {r["id"] for r in runs if r["status"] == 200} | {f["id"] for f in failures}


def run_breaker_stage(
    app: Any,
    config: DemoConfig,
    stub: PartnerStub,
    *,
    workers: int,
    concurrency: int,
    echo: Echo,
) -> BreakerResult:
    """Run the breaker stage against ``stub`` and return what it recorded.

    Raises:
        DemoError: Workers did not start or one exited.
    """
    task = app.tasks[BREAKER_TASK]
    keys = [
        config.starts_key(BREAKER_STAGE),
        config.failures_key(BREAKER_STAGE),
        config.deferrals_key(BREAKER_STAGE),
        config.transitions_key(),
    ]
    client = redis.Redis.from_url(config.redis_url)
    try:
        client.delete(*keys)
        began = time.monotonic()
        echo(f"  starting {workers} workers (celery worker -c {concurrency}) ...", nl=False)
        with _fleet(config, BREAKER_STAGE, workers, concurrency) as fleet:
            echo(f" ready in {time.monotonic() - began:.1f}s")
            echo(
                f"  partner stub at {stub.url}: healthy {HEALTHY_FOR:g}s, then failing until "
                f"{RECOVER_AFTER:g}s after the breaker opens"
            )
            offset = _clock_offset(client)
            start = time.time()
            script = _Script(stub, offset, start)
            published: dict[str, float] = {}
            checked = start
            with app.producer_or_acquire() as producer:
                while True:
                    now = time.time()
                    while start + len(published) / CALLS_PER_SECOND <= now:
                        sent = task.apply_async((stub.url,), producer=producer)
                        published[sent.id] = time.time() + offset
                    transitions = _records(client, config.transitions_key())
                    if not script.step(now, transitions):
                        break
                    if now - checked >= 1.0:
                        checked = now
                        for worker in fleet:
                            if not worker.is_alive():
                                raise DemoError(
                                    f"worker {worker.hostname} exited:\n{worker.log()[-3000:]}"
                                )
                    time.sleep(TICK)
            end = time.time() + offset
            echo(
                f"  published {len(published)} calls ({CALLS_PER_SECOND}/s for "
                f"{end - offset - start:.1f}s); waiting for every task to end ...",
                nl=False,
            )
            deadline = time.monotonic() + DRAIN_TIMEOUT
            while time.monotonic() < deadline and set(published) - _ended(client, config):
                time.sleep(0.1)
            echo(" done" if not set(published) - _ended(client, config) else " timed out")
            result = BreakerResult(
                workers=workers,
                slots=workers * concurrency,
                rate=CALLS_PER_SECOND,
                start=start + offset,
                end=end,
                published=published,
                calls=[PartnerCall(c.t + offset, c.status, c.task) for c in stub.calls_snapshot()],
                switches=script.switches,
                transitions=_records(client, config.transitions_key()),
                runs=_records(client, config.starts_key(BREAKER_STAGE)),
                failures=_records(client, config.failures_key(BREAKER_STAGE)),
                deferrals=int(client.get(config.deferrals_key(BREAKER_STAGE)) or 0),
            )
            echo("  stopping workers ...", nl=False)
            stopping = time.monotonic()
        echo(f" done in {time.monotonic() - stopping:.1f}s")
    finally:
        client.close()
    return result
