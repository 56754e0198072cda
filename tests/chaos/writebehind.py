"""Write-behind under faults: writer processes that log what was acknowledged, the real
``taskguard drain`` command, and the write-behind audit.

Writers are tests/chaos/apps/wb_writer.py processes; the drain is ``taskguard drain`` in a
process (and session) of its own, which the test may kill or freeze. Neither is ever
started on a server the test does not own.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import taskguard
from taskguard.backend import RedisBackend
from taskguard.cache import CacheService
from taskguard.drain.metrics import DrainMetrics, queue_metrics
from taskguard.drain.partition import Partition
from taskguard.errors import BackendUnavailable
from taskguard.sinks.sql import SQLStore
from taskguard.testing import wait_until

from .auditor import (
    Ack,
    Moment,
    lost_to_wipes,
    stale_reads,
    taskguard_tracebacks,
    writebehind_violations,
)

ROOT = Path(__file__).resolve().parents[2]
TASKGUARD = str(Path(sys.executable).with_name("taskguard"))
#: The cache's default partition count (the writers use the default).
PARTITIONS = 8


@dataclass
class Writer:
    process: subprocess.Popen[bytes]
    acks: Path
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Drain:
    process: subprocess.Popen[bytes]
    log: Path
    killed: bool = False

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class WriteBehindRun:
    """One write-behind namespace: its writers and drains, on the test's own servers."""

    redis_url: str
    store_url: str
    directory: Path
    prefix: str = field(default_factory=lambda: f"tgt-{uuid.uuid4().hex[:8]}")
    namespace: str = field(default_factory=lambda: f"wb{uuid.uuid4().hex[:6]}")
    table: str = field(default_factory=lambda: f"tg_kv_{uuid.uuid4().hex[:8]}")
    writers: list[Writer] = field(default_factory=list)
    drains: list[Drain] = field(default_factory=list)

    @functools.cached_property
    def backend(self) -> RedisBackend:
        backend = taskguard.connect(self.redis_url, prefix=self.prefix).backend
        assert isinstance(backend, RedisBackend)
        return backend

    @functools.cached_property
    def store(self) -> SQLStore:
        store = SQLStore(self.store_url, table=self.table)
        store.create_table()
        return store

    @functools.cached_property
    def cache(self) -> CacheService:
        """The namespace as the test process sees it (building it registers it)."""
        return taskguard.connect(self.backend).cache(
            self.namespace, strategy="write-behind", ttl=3600, store=self.store
        )

    # ------------------------------------------------------------ processes

    def start_writers(self, count: int, *, keys: int, writes: int, rate: float) -> None:
        """Start ``count`` writers (see apps/wb_writer.py for what each writes)."""
        for writer in range(count):
            acks = self.directory / f"acks-{writer}.log"
            argv = [
                sys.executable, "-m", "tests.chaos.apps.wb_writer",
                self.redis_url, self.prefix, self.namespace, self.store_url, self.table,
                str(writer), str(keys), str(writes), str(rate), str(acks),
            ]  # fmt: skip
            log = self.directory / f"writer-{writer}.log"
            # Its log goes to a file: a pipe nobody reads would block it once full.
            with open(log, "wb") as out:
                process = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
            self.writers.append(Writer(process, acks, log))

    def start_drain(self) -> Drain:
        """Start ``taskguard drain`` for the namespace, in a session of its own.

        Short lease and back-off settings: a killed drain's partitions are taken over, and
        the store's return noticed, within seconds.
        """
        self.cache  # noqa: B018 - the namespace (and its table) exist before the drain starts
        log = self.directory / f"drain-{len(self.drains)}.log"
        argv = [
            TASKGUARD, "drain",
            "--redis-url", self.redis_url, "--prefix", self.prefix,
            "--store", self.store_url, "--table", self.table,
            "--namespace", self.namespace,
            "--workers", "2", "--lease-ttl", "1", "--claim-idle", "1",
            "--backoff-max", "1", "--status-interval", "1",
        ]  # fmt: skip
        with open(log, "wb") as out:
            process = subprocess.Popen(
                argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        drain = Drain(process, log)
        self.drains.append(drain)
        return drain

    def kill(self, drain: Drain) -> None:
        """``kill -9`` a drain."""
        drain.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(drain.process.pid, signal.SIGKILL)
        drain.process.wait(10)

    def freeze(self, drain: Drain) -> None:
        os.killpg(drain.process.pid, signal.SIGSTOP)

    def thaw(self, drain: Drain) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(drain.process.pid, signal.SIGCONT)

    def wait_draining(self, drain: Drain, timeout: float = 30.0) -> None:
        """Wait until ``drain`` holds partitions (it found the namespace's queue)."""
        wait_until(lambda: "now drained by" in drain.text(), timeout=timeout, interval=0.05)

    def wait_writers(self, timeout: float = 120.0) -> None:
        """Wait for every writer to finish; each must exit cleanly."""
        for writer in self.writers:
            writer.process.wait(timeout)
            assert writer.process.returncode == 0, writer.text()[-3000:]
            assert "done " in writer.text(), writer.text()[-3000:]

    def close(self) -> None:
        """Stop what still runs (writers, drains), drop the table, close connections."""
        for writer in self.writers:
            if writer.process.poll() is None:
                writer.process.kill()
                writer.process.wait(10)
        for drain in self.drains:
            self.thaw(drain)
            if drain.process.poll() is None:
                drain.process.send_signal(signal.SIGTERM)
        for drain in self.drains:
            try:
                drain.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill(drain)
        with contextlib.suppress(Exception):
            self.store.drop_table()
        self.store.close()
        self.backend.close()

    # ------------------------------------------------------------ progress

    def acked(self) -> int:
        """Writes acknowledged so far, by every writer."""
        return sum(_count_lines(w.acks) for w in self.writers)

    def wait_acked(self, count: int, timeout: float = 60.0) -> None:
        wait_until(
            lambda: self.acked() >= count,
            timeout=timeout,
            interval=0.02,
            message=lambda: f"{self.acked()} writes acknowledged, waiting for {count}",
        )

    def queue(self) -> DrainMetrics:
        """Backlog and pending of the namespace, from its partition streams (not from the
        namespace registry, which a FLUSHDB removes)."""
        partitions = [Partition.of(self.backend.keys, self.namespace, i) for i in range(PARTITIONS)]
        return queue_metrics(self.backend, partitions)

    def wait_drained(self, timeout: float = 30.0) -> None:
        def drained() -> bool:
            try:
                found = self.queue()
            except BackendUnavailable:
                return False
            return found.backlog == 0 and found.pending == 0

        wait_until(
            drained, timeout=timeout, interval=0.1, message=lambda: f"still queued: {self.queue()}"
        )

    # ------------------------------------------------------------ the audit

    def acks(self) -> list[Ack]:
        found = []
        for writer in self.writers:
            for line in writer.acks.read_text().splitlines():
                if line.startswith("ERR "):
                    continue
                key, seq, called, returned = line.split()
                found.append(Ack(key, int(seq), float(called), float(returned)))
        return found

    def errors(self) -> list[str]:
        """The writes whose ``set()`` raised (not acknowledged)."""
        return [
            line
            for writer in self.writers
            for line in writer.acks.read_text().splitlines()
            if line.startswith("ERR ")
        ]

    def stored(self, keys: Sequence[str]) -> dict[str, int]:
        """Key -> the writer's sequence number of the value the store holds."""
        rows = self.store.load_many(self.namespace, list(keys))
        return {k: int(row.value["n"]) for k, row in rows.items() if not row.deleted}

    def reads(self, keys: Sequence[str]) -> dict[str, int | None]:
        """Key -> the sequence number a read through the cache returns (None: nothing)."""
        values: dict[str, Any] = self.cache.get_many(keys)
        return {k: int(values[k]["n"]) if k in values else None for k in keys}


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if not line.startswith(b"ERR "))
    except FileNotFoundError:
        return 0


@dataclass
class WriteBehindAudit:
    acks: list[Ack]
    lost_to_wipes: list[str]

    def summary(self) -> str:
        keys = {a.key for a in self.acks}
        return (
            f"{len(self.acks)} acknowledged writes over {len(keys)} keys; "
            f"{len(self.lost_to_wipes)} keys lost with Redis's data"
        )


def audit_writebehind(run: WriteBehindRun, *, wipes: Sequence[Moment] = ()) -> WriteBehindAudit:
    """Check the store and the reads against every acknowledged write; fail with all the
    violations.

    The store holds each key's newest acknowledged write (a write made before a wipe of
    Redis's data excepted); a read through the cache never returns an older value (for
    keys the wipe did not lose); nothing is dead-lettered; no ``set()`` raised; no drain
    or writer logged a traceback through taskguard.
    """
    acks = run.acks()
    keys = sorted({a.key for a in acks})
    stored = run.stored(keys)
    lost = lost_to_wipes(acks, stored, wipes)
    violations = {
        "lost or older in the store": writebehind_violations(acks, stored, wipes=wipes),
        "stale reads": stale_reads(acks, run.reads(keys), skip=lost),
        "dead letters": [f"{n} dead-lettered"] if (n := run.queue().dead_letters) else [],
        # The faults here leave the store or Redis up: a set() always has somewhere to go.
        "set() raised": run.errors(),
        "tracebacks": [
            tb for p in [*run.drains, *run.writers] for tb in taskguard_tracebacks(p.text())
        ],
    }
    report = {name: found for name, found in violations.items() if found}
    audit = WriteBehindAudit(acks, lost)
    print("audited:", audit.summary())
    if report:
        pytest.fail(
            "the auditor found violations:\n"
            + "\n".join(
                f"  {name} ({len(lines)}): {line}"
                for name, lines in report.items()
                for line in lines[:10]
            ),
            pytrace=False,
        )
    return audit
