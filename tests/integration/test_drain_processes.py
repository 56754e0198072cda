"""The drain in real processes: ``taskguard drain`` killed with SIGKILL and restarted, and
the bootstep inside a real ``celery worker``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import taskguard
from taskguard.backend import RedisBackend
from taskguard.cache.records import partition_of
from taskguard.drain import metrics
from taskguard.sinks.sql import SQLStore

from .conftest import ROOT, Fleet

NS = "orders"
P = 4
TASKGUARD = str(Path(sys.executable).parent / "taskguard")


def produce(backend: RedisBackend, writes: int, keys: int) -> dict[str, Any]:
    """Queue ``writes`` writes over ``keys`` keys as the cache would; the expected rows."""
    client = backend.client
    client.hsetnx(backend.keys.write_behind_namespaces(), NS, P)
    expected: dict[str, Any] = {}
    pipe = client.pipeline(transaction=False)
    for i in range(writes):
        key = f"order:{i % keys}"
        p = partition_of(key, P)
        pipe.xadd(backend.keys.cache_stream(NS, p), {"k": key, "v": json.dumps(i), "c": "json"})
        expected[key] = i
        if len(pipe) >= 1000:
            pipe.execute()
    pipe.execute()
    return expected


def wait_until(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def backend(redis_url: str, tg_prefix: str) -> Iterator[RedisBackend]:
    found = taskguard.connect(redis_url, prefix=tg_prefix).backend
    assert isinstance(found, RedisBackend)
    yield found
    found.close()


def start_drain(redis_url: str, prefix: str, store_url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                TASKGUARD,
                "drain",
                "--redis-url",
                redis_url,
                "--prefix",
                prefix,
                "--store",
                store_url,
                "--namespace",
                NS,
                "--batch-size",
                "100",
                "--lease-ttl",
                "2",
                "--status-interval",
                "0.5",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=out,
            start_new_session=True,
        )


def test_a_drain_killed_mid_run_and_restarted_leaves_the_exact_final_state(
    redis_url: str, tg_prefix: str, backend: RedisBackend, tmp_path: Path
) -> None:
    store_url = f"sqlite:///{tmp_path / 'orders.db'}"
    log = tmp_path / "drain.log"
    expected = produce(backend, writes=30_000, keys=3_000)
    store = SQLStore(store_url)
    store.create_table()
    drain = start_drain(redis_url, tg_prefix, store_url, log)
    try:
        # Kill it while it is mid-way: some written, much still queued.
        wait_until(lambda: metrics(backend, NS).backlog < 28_000, 60, "the drain to start")
        os.killpg(drain.pid, signal.SIGKILL)
        drain.wait(10)
        left = metrics(backend, NS)
        assert left.backlog > 0, "the drain finished before it was killed"
        drain = start_drain(redis_url, tg_prefix, store_url, log)

        def drained() -> bool:
            found = metrics(backend, NS)
            return found.backlog == 0 and found.pending == 0

        wait_until(drained, 120, "the restarted drain to finish")
        drain.send_signal(signal.SIGTERM)
        drain.wait(30)
        output = log.read_text()
        assert drain.returncode == 0, output[-3000:]
        assert "rows/s" in output  # the periodic status line
        if left.pending:  # what the killed drain held was claimed by the new one
            assert "re-delivering" in output
    finally:
        if drain.poll() is None:
            os.killpg(drain.pid, signal.SIGKILL)
            drain.wait(10)
    rows = store.load_many(NS, sorted(expected))
    assert {k: row.value for k, row in rows.items()} == expected
    store.close()


def test_the_worker_bootstep_drains_and_stops_cleanly(
    fleet_factory: Callable[..., Fleet], tmp_path: Path
) -> None:
    store_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    fleet = fleet_factory(settings={"drain": {"enabled": True, "store": store_url, "lease_ttl": 3}})
    backend = taskguard.connect(fleet.guard_url, prefix=fleet.prefix).backend
    assert isinstance(backend, RedisBackend)
    expected = produce(backend, writes=2_000, keys=300)
    fleet.start(1)
    worker = fleet.workers[0]

    def drained() -> bool:
        found = metrics(backend, NS)
        return found.backlog == 0 and found.pending == 0

    wait_until(drained, 60, "the worker's drain pool")
    store = SQLStore(store_url)
    rows = store.load_many(NS, sorted(expected))
    assert {k: row.value for k, row in rows.items()} == expected
    assert worker.stop() == 0
    log = worker.log()
    assert "drain: pool" in log
    assert "started" in log
    # A clean stop releases every lease, so another worker takes over at once.
    assert all(backend.client.get(backend.keys.drain_lease(NS, p)) is None for p in range(P))
    store.close()
    backend.close()
