"""The chaos suite's tools: a Redis that can crash, a fleet that knows whom it killed, a load.

Faults only ever hit what the test started: its own ``redis-server`` (guard state, the
write-behind queue), its own PostgreSQL cluster, its own worker and drain processes. The
broker, and the records runs leave for the auditor, live on the session's Redis
(``redis_url``), which no fault touches.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from taskguard.testing import RedisServer, WorkerProcess, wait_until
from taskguard.testing.servers import free_port
from tests.integration.conftest import ROOT, Fleet

from .auditor import WorkerReport

APP = "tests.chaos.apps.audited"


def node(hostname: str) -> str:
    """A worker's node name: ``tg1-ab12cd`` of ``tg1-ab12cd@%h`` or ``tg1-ab12cd@host``."""
    return hostname.split("@", 1)[0]


class CrashableRedis:
    """A private ``redis-server`` with an append-only file fsynced on every write.

    ``appendfsync always`` makes a crash deterministic: every write Redis acknowledged is
    on disk when it is killed.
    """

    def __init__(self) -> None:
        # A fixed port: the server comes back where the workers look for it.
        self.server = RedisServer(port=free_port(), appendonly=True)

    @property
    def url(self) -> str:
        return self.server.url

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self) -> None:
        self.server.start()
        with self.client() as client:
            client.config_set("appendfsync", "always")

    @contextlib.contextmanager
    def out_of_memory(self) -> Iterator[None]:
        """Redis at ``maxmemory`` with ``noeviction`` while in the block: it refuses every
        write that needs memory (``OOM``), and answers the rest."""
        with self.client() as client:
            client.config_set("maxmemory-policy", "noeviction")
            used = int(client.info("memory")["used_memory"])
            client.config_set("maxmemory", used // 2)
            try:
                yield
            finally:
                client.config_set("maxmemory", 0)

    def kill(self) -> None:
        """``kill -9`` the server (no shutdown, no final save)."""
        pid = self.server.pid
        assert pid is not None, "the server is not running"
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not self.server.is_running(), timeout=10)

    def close(self) -> None:
        self.server.close()


@dataclass
class ChaosFleet(Fleet):
    """A fleet of tests/chaos/apps/audited.py workers that knows which ones it killed."""

    app: str = APP
    killed: set[str] = field(default_factory=set)

    def worker(self, concurrency: int = 2, queues: tuple[str, ...] = ()) -> WorkerProcess:
        """A worker (not started) consuming the fleet's queue and ``queues``
        (:meth:`queue_named` names them)."""
        worker = WorkerProcess(
            self.app,
            concurrency=concurrency,
            env=self.env(),
            cwd=ROOT,
            queues=(self.queue, *queues),
        )
        self.workers.append(worker)
        return worker

    def queue_named(self, name: str) -> str:
        """A queue of this fleet's own (under its prefix, so cleanup removes it)."""
        return f"{self.prefix}:q-{name}"

    def send_to(self, queue: str, task: str, *args: Any) -> str:
        """Publish ``task`` to ``queue``; returns its task id."""
        result = self.celery.send_task(f"{self.app}.{task}", args=args, queue=queue)
        return str(result.id)

    def was_killed(self, hostname: str) -> bool:
        """Whether the test killed the worker named ``hostname`` (as a run records it)."""
        return node(hostname) in {node(k) for k in self.killed}

    def kill(self, worker: WorkerProcess) -> float:
        """``kill -9`` the worker and its pool; returns the moment (recording clock)."""
        self.killed.add(worker.hostname)
        worker.kill()
        return self.server_time()

    def replace(self) -> WorkerProcess:
        """Start one more worker (not waiting for it to be ready)."""
        return self.worker().start(wait=False)

    def reports(self) -> list[WorkerReport]:
        return [
            WorkerReport(w.hostname, w.is_alive(), w.hostname in self.killed, w.log())
            for w in self.workers
        ]

    def freeze(self, worker: WorkerProcess) -> None:
        """SIGSTOP the worker and its pool (SIGCONT with :meth:`thaw`)."""
        assert worker.process is not None
        os.killpg(worker.process.pid, signal.SIGSTOP)

    def thaw(self, worker: WorkerProcess) -> None:
        assert worker.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stop every worker at once: thawed, a cold shutdown, then kill -9 if need be."""
        running = [w for w in self.workers if w.is_alive()]
        for worker in running:
            self.thaw(worker)
            assert worker.process is not None
            # SIGQUIT: a cold shutdown. Tasks still waiting for a lock or a slot, or held
            # for a countdown, are of no interest once the test has audited.
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGQUIT)
        for worker in running:
            assert worker.process is not None
            try:
                worker.process.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
        super().stop()  # removes the logs

    def cleanup(self) -> None:
        super().cleanup()
        with self.client() as client:
            bindings = list(client.scan_iter(match=f"_kombu.binding.{self.prefix}:*"))
            client.unlink(f"_kombu.binding.{self.queue}", *bindings)


class Load:
    """Sends tasks to a fleet from a thread at a steady pace, until stopped.

    Args:
        fleet: Where to send.
        schedule: Tick number -> the ``(task, args)`` to send at that tick.
        tick: Seconds between ticks.
        max_ticks: A bound on the load, whatever happens to the test.
    """

    def __init__(
        self,
        fleet: Fleet,
        schedule: Callable[[int], list[tuple[str, tuple[Any, ...]]]],
        *,
        tick: float = 0.1,
        max_ticks: int = 600,
    ) -> None:
        self.fleet = fleet
        self.schedule = schedule
        self.tick = tick
        self.max_ticks = max_ticks
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-load", daemon=True)

    def _run(self) -> None:
        for n in range(self.max_ticks):
            for task, args in self.schedule(n):
                self.fleet.send(task, *args)
            if self._stop.wait(self.tick):  # the load's pace, not a synchronisation
                return

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
