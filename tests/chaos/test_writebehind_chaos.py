"""Write-behind under faults: writer processes, the real ``taskguard drain`` command, a
Redis and a PostgreSQL of the test's own, and an auditor.

Two writers each write 2000 values over 200 keys of their own (800 writes/s in all), and
log every ``set()`` that returned. The auditor then checks that the store holds every
key's newest acknowledged write, that a read through the cache never returns an older
value, and that nothing was dead-lettered (writebehind.audit_writebehind).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from taskguard.testing import PostgresServer, wait_until

from .auditor import Moment
from .harness import CrashableRedis
from .writebehind import Drain, WriteBehindRun, audit_writebehind

RunFactory = Callable[[str, str], WriteBehindRun]
WRITERS, KEYS, WRITES, RATE = 2, 200, 2000, 400.0
TOTAL = WRITERS * WRITES
#: What a drain logs when it finds the records it was draining gone (FLUSHDB, a restart
#: without persistence).
LOSS_LOGGED = re.compile(r"ERROR taskguard.drain: drain: the write-behind stream of \S+ vanished")


def start(run: WriteBehindRun, writes: int = WRITES) -> Drain:
    """Start a drain, wait until it drains the namespace, then start the writers."""
    drain = run.start_drain()
    run.wait_draining(drain)
    run.start_writers(WRITERS, keys=KEYS, writes=writes, rate=RATE)
    return drain


def assert_mid_run(run: WriteBehindRun, total: int = TOTAL) -> None:
    assert run.acked() < total, "the fault must come while the writers write"


def test_drain_killed_repeatedly(
    writebehind: RunFactory, crashable_redis: CrashableRedis, private_postgres: PostgresServer
) -> None:
    """kill -9 the drain three times mid-run, each time once it has taken the partitions
    over, and start a new one: every acknowledged write reaches the store, none older
    than the newest."""
    writes = 3000  # 7.5 s of writing: three takeovers, a lease's ttl each, fit in it
    run = writebehind(crashable_redis.url, private_postgres.dsn)
    drain = start(run, writes)
    for share in (0.15, 0.4, 0.65):
        run.wait_draining(drain)
        run.wait_acked(int(share * WRITERS * writes))
        run.kill(drain)
        assert_mid_run(run, WRITERS * writes)
        drain = run.start_drain()
    run.wait_writers()
    run.wait_drained()
    audit_writebehind(run)


def test_postgres_stopped_mid_drain(
    writebehind: RunFactory, crashable_redis: CrashableRedis, private_postgres: PostgresServer
) -> None:
    """Stop PostgreSQL for 3 s mid-run: writes keep queueing in Redis, the drain backs
    off and retries, then writes the backlog; nothing acknowledged is lost."""
    run = writebehind(crashable_redis.url, private_postgres.dsn)
    drain = start(run)
    run.wait_acked(TOTAL // 4)
    private_postgres.stop()
    assert_mid_run(run)
    time.sleep(3.0)  # the outage lasts 3 s
    private_postgres.start()
    run.wait_writers()
    run.wait_drained()
    audit_writebehind(run)
    assert "store write failed (transient" in drain.text()


def test_redis_killed_and_restarted_from_its_append_only_file(
    writebehind: RunFactory, crashable_redis: CrashableRedis, private_postgres: PostgresServer
) -> None:
    """kill -9 Redis (appendonly yes, appendfsync always) mid-run, start it again 1 s
    later: writes made meanwhile go straight to the store, the queue comes back from the
    append-only file, and the store ends with every key's newest acknowledged write."""
    run = writebehind(crashable_redis.url, private_postgres.dsn)
    drain = start(run)
    run.wait_acked(TOTAL // 4)
    crashable_redis.kill()
    assert_mid_run(run)
    time.sleep(1.0)  # the outage lasts 1 s
    crashable_redis.start()
    run.wait_writers()
    run.wait_drained()
    audit_writebehind(run)
    assert "straight to the store" in "".join(w.text() for w in run.writers)
    assert "drain: cannot reach Redis" in drain.text()


def test_redis_flushed_mid_run(
    writebehind: RunFactory, crashable_redis: CrashableRedis, private_postgres: PostgresServer
) -> None:
    """FLUSHDB while the drain is behind (frozen, so records are queued): what was queued
    is lost with Redis's data, and the drain that held those partitions logs the loss
    when it finds them gone; every write made after the flush reaches the store, though
    the namespace registry went too (a drain started after the flush finds the work)."""
    run = writebehind(crashable_redis.url, private_postgres.dsn)
    first = start(run)
    run.wait_acked(int(0.35 * TOTAL))
    run.freeze(first)
    try:
        # The lower half of the keys is last written at 40-45% of the run (wb_writer.py):
        # those writes wait in the queue when Redis loses it.
        run.wait_acked(TOTAL // 2)
        before = time.time()
        with crashable_redis.client() as client:
            client.flushdb()
        wipe = Moment(before, time.time())
        assert_mid_run(run)
    finally:
        run.thaw(first)
    wait_until(lambda: LOSS_LOGGED.search(first.text()), timeout=10)
    run.kill(first)
    with crashable_redis.client() as client:
        registry = run.backend.keys.write_behind_namespaces()
        assert not client.hexists(registry, run.namespace), "the registry must be gone"
    run.start_drain()  # it finds the work from the streams alone
    run.wait_writers()
    run.wait_drained()
    audit = audit_writebehind(run, wipes=[wipe])
    assert audit.lost_to_wipes, "the flush must lose queued records, or this shows nothing"


def test_redis_at_maxmemory(
    writebehind: RunFactory, crashable_redis: CrashableRedis, private_postgres: PostgresServer
) -> None:
    """Redis at maxmemory with noeviction (OOM) while a quarter of the writes are made
    (among them the last write of half the keys): those writes go straight to the store,
    no read returns a value older than an acknowledged write, and nothing is lost."""
    run = writebehind(crashable_redis.url, private_postgres.dsn)
    start(run)
    run.wait_acked(int(0.35 * TOTAL))
    with crashable_redis.out_of_memory():
        run.wait_acked(int(0.6 * TOTAL))
    run.wait_writers()
    run.wait_drained()
    audit_writebehind(run)
    assert "refuses writes" in "".join(w.text() for w in run.writers)
