"""Write-behind loses nothing: many writers, a drain that crashes, a database that goes away.

Writers are separate processes (tests/integration/apps/wb_writer.py) writing through a
write-behind cache on the real Redis; the drain is the real ``taskguard drain`` command in
its own process; the store is a real PostgreSQL or SQLite database. The oracle for "the
last value written" to a key is its cached value: the write-behind script sets the value
and queues the record in one atomic call with a long TTL, so after the writers stop the
cache holds exactly the newest write of every key.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import taskguard
from taskguard.drain import metrics as drain_metrics
from taskguard.sinks.sql import SQLStore
from taskguard.testing import PostgresServer

ROOT = Path(__file__).resolve().parents[2]
TASKGUARD = str(Path(sys.executable).with_name("taskguard"))
KEYS = 5_000
DRAIN_TIMEOUT = 180.0


@dataclass
class Run:
    """One write-behind namespace wired to a Redis prefix and a store."""

    redis_url: str
    prefix: str
    store_url: str
    table: str
    namespace: str = field(default_factory=lambda: f"wb{uuid.uuid4().hex[:6]}")
    drains: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @functools.cached_property
    def backend(self) -> taskguard.Backend:
        return taskguard.connect(self.redis_url, prefix=self.prefix).backend

    @functools.cached_property
    def store(self) -> SQLStore:
        return SQLStore(self.store_url, table=self.table)

    def close(self) -> None:
        self.stop_drains()
        self.backend.close()
        try:
            self.store.drop_table()
        finally:
            self.store.close()

    def writers(self, count: int, writes_each: int) -> list[subprocess.Popen[bytes]]:
        """Start ``count`` writer processes (each writes every key once, then at random)."""
        return [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.integration.apps.wb_writer",
                    self.redis_url,
                    self.prefix,
                    self.namespace,
                    self.store_url,
                    str(writer),
                    str(KEYS),
                    str(writes_each),
                    str(1000 + writer),
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for writer in range(count)
        ]

    def start_drain(self, *options: str) -> subprocess.Popen[bytes]:
        """Start ``taskguard drain`` for this namespace in its own process."""
        drain = subprocess.Popen(
            [
                TASKGUARD,
                "drain",
                "--redis-url",
                self.redis_url,
                "--prefix",
                self.prefix,
                "--store",
                self.store_url,
                "--table",
                self.table,
                "--namespace",
                self.namespace,
                "--workers",
                "2",
                *options,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.drains.append(drain)
        return drain

    def stop_drains(self) -> None:
        for drain in self.drains:
            if drain.poll() is None:
                drain.send_signal(signal.SIGTERM)
        for drain in self.drains:
            try:
                drain.wait(30)
            except subprocess.TimeoutExpired:
                drain.kill()
                drain.wait()

    def wait_drained(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """Wait until nothing is queued or pending in any partition."""
        deadline = time.monotonic() + timeout
        backend = self.backend
        while True:
            found = drain_metrics(backend, self.namespace)
            if found.backlog == 0 and found.pending == 0:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"not drained after {timeout:.0f}s: {found}")
            time.sleep(0.2)


def wait_writers(writers: list[subprocess.Popen[bytes]], timeout: float = 300.0) -> int:
    """Wait for every writer; return the writes they made (each prints ``done N``)."""
    total = 0
    for writer in writers:
        out, err = writer.communicate(timeout=timeout)
        assert writer.returncode == 0, err.decode()[-3000:]
        total += int(out.decode().split()[-1])
    return total


def assert_exact(run: Run) -> None:
    """Every key is in the store with its newest written value; nothing dead-lettered."""
    backend = run.backend
    cache = taskguard.connect(backend).cache(
        run.namespace, strategy="write-behind", ttl=3600, store=run.store
    )
    keys = [f"k{i}" for i in range(KEYS)]
    expected = cache.get_many(keys)
    assert len(expected) == KEYS, "the oracle (cached newest values) is incomplete"
    stored = run.store.load_many(run.namespace, keys)
    missing = [key for key in keys if key not in stored]
    assert not missing, f"{len(missing)} keys never reached the store, e.g. {missing[:5]}"
    wrong = [key for key in keys if stored[key].deleted or stored[key].value != expected[key]]
    assert not wrong, (
        f"{len(wrong)} keys hold an older value, e.g. {wrong[0]}: "
        f"store {stored[wrong[0]]}, newest write {expected[wrong[0]]}"
    )
    assert drain_metrics(backend, run.namespace).dead_letters == 0


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'wb.sqlite3'}"


def _run(redis_url: str, prefix: str, store_url: str) -> Iterator[Run]:
    run = Run(redis_url, prefix, store_url, table=f"tg_kv_{uuid.uuid4().hex[:8]}")
    run.store.create_table()
    try:
        yield run
    finally:
        run.close()


@pytest.fixture(params=["postgresql", "sqlite"])
def run(
    request: pytest.FixtureRequest, redis_url: str, tg_prefix: str, sqlite_url: str
) -> Iterator[Run]:
    store_url = (
        request.getfixturevalue("postgres_dsn") if request.param == "postgresql" else sqlite_url
    )
    yield from _run(redis_url, tg_prefix, store_url)


def test_200k_writes_over_5k_keys_from_four_writers_all_land(run: Run) -> None:
    run.start_drain()
    writers = run.writers(4, 50_000)
    assert wait_writers(writers) == 200_000
    run.wait_drained()
    assert_exact(run)


def test_drain_killed_repeatedly_mid_run_loses_nothing(run: Run) -> None:
    # Short leases: each new drain takes the killed one's partitions over within 2 s.
    fast = ("--lease-ttl", "2", "--claim-idle", "2")
    writers = run.writers(3, 40_000)
    drain = run.start_drain(*fast)
    for _ in range(3):
        time.sleep(1.5)  # the fault's timing: a kill every 1.5 s, mid-run
        os.killpg(drain.pid, signal.SIGKILL)
        drain.wait()
        drain = run.start_drain(*fast)
    wait_writers(writers)
    run.wait_drained()
    assert_exact(run)


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


def test_postgresql_outage_mid_run_then_the_backlog_drains(
    redis_url: str, tg_prefix: str, private_postgres: PostgresServer
) -> None:
    for run in _run(redis_url, tg_prefix, private_postgres.dsn):
        run.start_drain()
        writers = run.writers(2, 30_000)
        time.sleep(1.0)  # the fault's timing: the outage starts 1 s into the run...
        private_postgres.stop()
        time.sleep(3.0)  # ...and lasts 3 s: writes keep queueing; the drain backs off
        private_postgres.start()
        wait_writers(writers)
        run.wait_drained()
        assert_exact(run)
