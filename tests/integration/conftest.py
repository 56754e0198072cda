"""Real worker fleets for integration tests: real Redis, real ``celery worker`` processes.

Brokers: a fleet's Celery broker is the test Redis, unless a test asks for both brokers::

    @pytest.mark.both_brokers
    def test_deferral(fleet: Fleet) -> None: ...

Such a test runs twice, as ``[redis]`` and ``[amqp]``: on the ``amqp`` run the fleets of
its module (``fleet_factory``) publish and consume through RabbitMQ (``amqp_url``), while
guard state, the result backend and the records stay on the test Redis. The other tests of
a module with a ``both_brokers`` test run once, as ``[redis]`` (the same parameter, so
they share the module's Redis fleet); tests elsewhere are not parametrized at all.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import types
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult
from kombu import Connection

from taskguard.testing import WorkerProcess
from taskguard.urls import redact
from tests.rabbitmq import DEFAULT_AMQP_URL, amqp_available, delete_queues

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration.apps.guarded"
BROKERS = ("redis", "amqp")
AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")


def refused_start(worker: WorkerProcess, timeout: float = 60.0) -> tuple[str, str]:
    """Start ``worker``, which must stop before it is ready; return its log and the
    ``ConfigurationError`` line that stopped it."""
    worker.start(wait=False)
    assert worker.process is not None
    code = worker.process.wait(timeout)
    log = worker.log()
    assert code != 0, log[-2000:]
    assert "ready." not in log
    line = next(x for x in log.splitlines() if x.startswith("taskguard.errors.ConfigurationError"))
    return log, line


@dataclass
class Fleet:
    """Worker processes running tests/integration/apps/guarded.py, and what they record.

    ``broker_url`` is Celery's broker (Redis or RabbitMQ); ``result_url`` the Redis that
    holds the results and the records (the broker's, when empty: a Redis broker);
    ``guard_url`` the Redis that holds guard state.
    """

    broker_url: str
    guard_url: str
    app: str = APP
    prefix: str = field(default_factory=lambda: f"tgt-{uuid.uuid4().hex[:8]}")
    queue: str = field(default_factory=lambda: f"tgq-{uuid.uuid4().hex[:8]}")
    settings: dict[str, Any] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)
    result_url: str = ""

    def __post_init__(self) -> None:
        if not self.result_url:
            self.result_url = self.broker_url

    @property
    def on_amqp(self) -> bool:
        """Whether the broker is RabbitMQ (else Redis)."""
        return self.broker_url.startswith(AMQP_SCHEMES)

    @property
    def queues(self) -> list[str]:
        """The broker queues this fleet's tasks may go to: its queue, and the companion
        queue deferrals may be parked in (``<queue>.deferred``)."""
        return [self.queue, f"{self.queue}.deferred"]

    def env(self) -> dict[str, str]:
        return {
            "TG_BROKER_URL": self.broker_url,
            "TG_RESULT_URL": self.result_url,
            "TASKGUARD_REDIS_URL": self.guard_url,
            "TG_PREFIX": self.prefix,
            "TG_QUEUE": self.queue,
            "TG_SETTINGS": json.dumps(self.settings),
        }

    def worker(self, concurrency: int = 2, pool: str = "prefork") -> WorkerProcess:
        """A worker of this fleet (not started); stopped and cleaned up with the fleet."""
        worker = WorkerProcess(
            self.app, concurrency=concurrency, pool=pool, env=self.env(), cwd=ROOT
        )
        self.workers.append(worker)
        return worker

    def start(self, count: int, concurrency: int = 2, pool: str = "prefork") -> Fleet:
        started = [self.worker(concurrency, pool).start(wait=False) for _ in range(count)]
        for worker in started:
            worker.wait_ready(60)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every worker: a warm shutdown of all at once (a worker takes seconds to
        stop, and one after the other those seconds add up), then kill -9 if need be."""
        running = [w for w in self.workers if w.is_alive()]
        for worker in running:
            assert worker.process is not None
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        if running and self.on_amqp:
            self._wake(running)
        for worker in running:
            assert worker.process is not None
            try:
                worker.process.wait(timeout)
            except subprocess.TimeoutExpired:
                worker.kill()
        for worker in self.workers:
            shutil.rmtree(worker.logfile.parent, ignore_errors=True)

    def _wake(self, workers: list[WorkerProcess]) -> None:
        """Wake idle workers on RabbitMQ, so they see the shutdown at once.

        An idle worker's event loop sleeps until its next timer (up to 10 s) before it
        checks for a shutdown; on Redis it polls every second. A message on the worker's
        own remote-control queue wakes it: a ``ping`` without ``reply_to`` (no answer),
        published straight to that queue through the default exchange, not to Celery's
        shared fan-out exchange, so no other worker on the broker sees it. Best effort:
        unwoken, a worker still stops, only later.
        """
        with Connection(self.broker_url, connect_timeout=5) as connection:
            try:
                producer = connection.Producer()
                for worker in workers:
                    node = worker.hostname.replace("%h", socket.gethostname())
                    producer.publish(
                        {"method": "ping", "arguments": {}, "destination": [node]},
                        routing_key=f"{node}.celery.pidbox",
                        serializer="json",
                    )
            except (OSError, *connection.connection_errors, *connection.channel_errors):
                pass

    @functools.cached_property
    def celery(self) -> Celery:
        """A client app in the test process: sends tasks and reads results."""
        return Celery(
            "tg-test-client", broker=self.broker_url, backend=self.result_url, set_as_current=False
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
        """A client of the Redis that holds the records (and the results)."""
        return redis.Redis.from_url(self.result_url)

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
        """Delete the fleet's keys and its queues (on RabbitMQ: only those, and the
        exchanges Celery named after them)."""
        with self.client() as client:
            keys = list(client.scan_iter(match=f"{self.prefix}:*", count=1000))
            if not self.on_amqp:
                keys += [queue.encode() for queue in self.queues]
            if keys:
                client.unlink(*keys)
        if self.on_amqp:
            delete_queues(self.broker_url, self.queues)


# ---------------------------------------------------------------- brokers


def _asks_for_both_brokers(obj: object) -> bool:
    marks = getattr(obj, "pytestmark", []) if isinstance(obj, types.FunctionType) else []
    return any(mark.name == "both_brokers" for mark in marks)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``both_brokers`` tests run on each broker; the other tests of their module on Redis.

    Every test of such a module that uses ``broker`` (through ``fleet_factory``) gets the
    parameter, so that its Redis runs share one module fleet with the ``[redis]`` runs.
    """
    if "broker" not in metafunc.fixturenames:
        return
    if not any(_asks_for_both_brokers(obj) for obj in vars(metafunc.module).values()):
        return
    both = metafunc.definition.get_closest_marker("both_brokers") is not None
    metafunc.parametrize("broker", BROKERS if both else BROKERS[:1], indirect=True, scope="module")


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """URL of a RabbitMQ for the session, or a skip that says why there is none.

    ``$TASKGUARD_TEST_AMQP_URL`` when set (a failure if nothing answers there), else
    ``amqp://guest:guest@127.0.0.1:5672//`` when it answers. scripts/test sets the
    variable, to a throwaway node it started when none was running.
    """
    configured = os.environ.get("TASKGUARD_TEST_AMQP_URL", "").strip()
    if configured == "throwaway":
        pytest.skip(
            "TASKGUARD_TEST_AMQP_URL=throwaway: only scripts/test starts a throwaway RabbitMQ"
        )
    if configured:
        if not amqp_available(configured, timeout=2.0):
            pytest.fail(
                f"TASKGUARD_TEST_AMQP_URL={redact(configured)} does not accept an AMQP connection",
                pytrace=False,
            )
        return configured
    if amqp_available(DEFAULT_AMQP_URL):
        return DEFAULT_AMQP_URL
    pytest.skip(
        f"no RabbitMQ answers at {redact(DEFAULT_AMQP_URL)} and TASKGUARD_TEST_AMQP_URL is "
        "not set (scripts/test starts a throwaway one where rabbitmq-server is installed)"
    )


@pytest.fixture(scope="module")
def broker(request: pytest.FixtureRequest) -> str:
    """The Celery broker of the module's fleets: ``redis`` or ``amqp`` (see the module
    docstring)."""
    return str(getattr(request, "param", "redis"))


@pytest.fixture(scope="module")
def fleet_factory(
    broker: str, redis_url: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Fleet]]:
    """Makes fleets on ``broker``, their guard state, results and records on Redis; stops
    them and deletes what they left (keys, queues) after the module (or the broker)."""
    broker_url = request.getfixturevalue("amqp_url") if broker == "amqp" else redis_url
    fleets: list[Fleet] = []

    def make(**kwargs: Any) -> Fleet:
        kwargs.setdefault("broker_url", broker_url)
        kwargs.setdefault("guard_url", redis_url)
        kwargs.setdefault("result_url", redis_url)
        fleet = Fleet(**kwargs)
        fleets.append(fleet)
        return fleet

    yield make
    if fleets:  # the fleets stop side by side, as their workers do
        with ThreadPoolExecutor(len(fleets)) as pool:
            list(pool.map(Fleet.stop, fleets))
    for fleet in fleets:
        fleet.cleanup()
        fleet.celery.close()
