"""Real worker fleets for integration tests: real Redis, real ``celery worker`` processes."""

from __future__ import annotations

import functools
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from taskguard.testing import WorkerProcess

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration.apps.guarded"


@dataclass
class Fleet:
    """Worker processes running tests/integration/apps/guarded.py, and what they record."""

    broker_url: str
    guard_url: str
    app: str = APP
    prefix: str = field(default_factory=lambda: f"tgt-{uuid.uuid4().hex[:8]}")
    queue: str = field(default_factory=lambda: f"tgq-{uuid.uuid4().hex[:8]}")
    settings: dict[str, Any] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {
            "TG_BROKER_URL": self.broker_url,
            "TASKGUARD_REDIS_URL": self.guard_url,
            "TG_PREFIX": self.prefix,
            "TG_QUEUE": self.queue,
            "TG_SETTINGS": json.dumps(self.settings),
        }

    def worker(self, concurrency: int = 2) -> WorkerProcess:
        """A worker of this fleet (not started); stopped and cleaned up with the fleet."""
        worker = WorkerProcess(self.app, concurrency=concurrency, env=self.env(), cwd=ROOT)
        self.workers.append(worker)
        return worker

    def start(self, count: int, concurrency: int = 2) -> Fleet:
        started = [self.worker(concurrency).start(wait=False) for _ in range(count)]
        for worker in started:
            worker.wait_ready(60)
        return self

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
            shutil.rmtree(worker.logfile.parent, ignore_errors=True)

    @functools.cached_property
    def celery(self) -> Celery:
        """A client app in the test process: sends tasks and reads results."""
        return Celery(
            "tg-test-client", broker=self.broker_url, backend=self.broker_url, set_as_current=False
        )

    def send(self, task: str, *args: Any, **options: Any) -> AsyncResult:
        """Publish ``<app module>.<task>`` by name (``send_task``) to this fleet's queue."""
        return self.celery.send_task(f"{self.app}.{task}", args=args, queue=self.queue, **options)

    def worker_of(self, hostname: str) -> WorkerProcess:
        """The worker whose node name is ``hostname`` (as in ``request.hostname``)."""
        name = hostname.split("@", 1)[0]
        return next(w for w in self.workers if w.hostname.split("@", 1)[0] == name)

    def server_time(self) -> float:
        with self.client() as client:
            seconds, micros = client.time()
        return float(seconds + micros / 1e6)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.broker_url)

    def records(self, kind: str) -> list[dict[str, Any]]:
        with self.client() as client:
            raw = client.lrange(f"{self.prefix}:{kind}", 0, -1)
        return [json.loads(item) for item in raw]

    def wait_for(
        self, kind: str, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 60.0
    ) -> list[dict[str, Any]]:
        """Poll ``records(kind)`` until ``done(records)`` or fail with the worker logs."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.records(kind)
            if done(records):
                return records
            if time.monotonic() > deadline:
                logs = "\n\n".join(w.log()[-3000:] for w in self.workers)
                pytest.fail(f"timed out waiting for {kind!r}: {len(records)} records\n{logs}")
            time.sleep(0.1)

    def cleanup(self) -> None:
        with self.client() as client:
            keys = list(client.scan_iter(match=f"{self.prefix}:*", count=1000))
            keys += [self.queue.encode(), f"{self.queue}.deferred".encode()]
            if keys:
                client.unlink(*keys)


@pytest.fixture(scope="module")
def fleet_factory(redis_url: str) -> Iterator[Callable[..., Fleet]]:
    fleets: list[Fleet] = []

    def make(**kwargs: Any) -> Fleet:
        kwargs.setdefault("broker_url", redis_url)
        kwargs.setdefault("guard_url", redis_url)
        fleet = Fleet(**kwargs)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop()
        fleet.cleanup()
        fleet.celery.close()
