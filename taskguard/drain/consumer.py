"""One drain thread's work on the partitions it holds: read, coalesce, write, acknowledge.

A batch is read with XREADGROUP (what a previous consumer left pending is claimed first),
coalesced per key, written to the store in one transaction and acknowledged by one script
that also clears the dirty marks still naming these writes. A transient store error is
retried with backoff (the batch is never dropped); a permanent one is bisected down to the
records at fault, which go to the dead letters while the rest are written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from taskguard import _instrument, signals
from taskguard.backend.redis import RedisBackend
from taskguard.backend.wire import REDIS_ERRORS as WIRE_ERRORS
from taskguard.errors import BackendError, BackendUnavailable, StoreError
from taskguard.sinks.base import Record, Store, accepts_json_text

from .backoff import SinkBreaker, backoff_delay
from .batch import (
    Coalesced,
    Entry,
    RawEntry,
    Rejected,
    coalesce,
    coalesce_raw,
    entry_of,
    id_order,
    write_bisecting,
)
from .config import DrainOptions
from .metrics import Throughput
from .partition import Partition, dead_letter, read_new, with_pending

__all__ = ["Abandoned", "Consumer", "DrainOptions"]

logger = logging.getLogger("taskguard.drain")

T = TypeVar("T")

#: Errors that mean Redis is not answering (the batch waits for it). A BackendError (a
#: permission, a script error) waits too, logged: the records are safe in their stream.
REDIS_ERRORS = (*WIRE_ERRORS, BackendUnavailable, BackendError)


class Abandoned(Exception):
    """The pool stopped before an in-flight batch could finish; it stays pending in Redis."""


class Consumer:
    """Drains the partitions handed to one thread.

    Args:
        backend: The Redis backend (every command goes through its port).
        owner: This pool's consumer name (also the value of its leases).
        options: Batch, linger and retry settings.
        stores: Namespace -> store.
        breakers: Namespace -> the breaker of its store.
        throughput: Counters shared by the pool.
        stopping: Set when the pool stops reading (the current batch still finishes).
        abandon: Set when the pool stops waiting for the current batch.
        sender: The ``sender`` of the signals (the pool).
    """

    def __init__(
        self,
        backend: RedisBackend,
        owner: str,
        options: DrainOptions,
        *,
        stores: Mapping[str, Store],
        breakers: Mapping[str, SinkBreaker],
        throughput: Throughput,
        stopping: threading.Event,
        abandon: threading.Event,
        sender: Any,
    ) -> None:
        self.backend = backend
        self.owner = owner
        self.options = options
        self.stores = stores
        self.breakers = breakers
        self.throughput = throughput
        self.stopping = stopping
        self.abandon = abandon
        self.sender = sender
        timeout = backend.socket_timeout
        # A blocking read must return before the socket times out, or it looks like an outage.
        self._block_slice = max(timeout * 0.8, 0.01) if timeout else 1.0

    # ------------------------------------------------------------ reading

    def cycle(self, partitions: Sequence[Partition]) -> int:
        """Claim what is pending, then read and write new batches once. Returns records done."""
        done = 0
        now = time.monotonic()
        due = [
            p for p in partitions if p.needs_claim or now - p.last_scan >= self.options.claim_idle
        ]
        for partition in with_pending(self.backend, due):  # usually none: one round trip
            done += self._recover(partition, fresh=partition.needs_claim)
        for partition in due:
            partition.needs_claim = False
            partition.last_scan = now
        for partition, raw in self.gather(partitions).items():
            done += self.process_raw(partition, raw)
        return done

    def _recover(self, partition: Partition, *, fresh: bool) -> int:
        # With a fresh lease, whatever is pending was left by a consumer that is gone.
        min_idle = 0.0 if fresh else self.options.claim_idle
        done = 0
        while not self.stopping.is_set():
            entries = partition.claim_pending(
                self.backend, self.owner, min_idle=min_idle, count=self.options.batch_size
            )
            if not entries:
                break
            logger.info(
                "drain: %s: re-delivering %d pending record(s)", partition.name, len(entries)
            )
            done += self.process(partition, entries)
        return done

    def gather(self, partitions: Sequence[Partition]) -> dict[Partition, list[RawEntry]]:
        """Read new entries until each partition has ``batch_size`` or ``linger`` has passed
        since the first arrived. Waits (cheaply, woken by new data) while nothing comes."""
        size = self.options.batch_size
        collected: dict[Partition, list[RawEntry]] = {}
        active = [p for p in partitions if not p.surrender]
        deadline: float | None = None
        while active and not self.stopping.is_set():
            want = [p for p in active if len(collected.get(p, ())) < size]
            if not want:
                break
            if deadline is None:
                block: float | None = min(self._block_slice, 0.25)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                block = min(left, self._block_slice)
            count = min(size - len(collected.get(p, ())) for p in want)
            got = read_new(self.backend, self.owner, want, count=count, block=block)
            if not got:
                if deadline is None:
                    break  # idle: let the caller look at its assignment again
                continue
            for partition, entries in got.items():
                collected.setdefault(partition, []).extend(entries)
            if deadline is None:
                if self.options.linger <= 0:
                    break
                deadline = time.monotonic() + self.options.linger
        return collected

    # ------------------------------------------------------------ writing

    def process(self, partition: Partition, entries: Sequence[Entry]) -> int:
        """Write one batch of ``partition`` and acknowledge it; dead-letter what must be.

        Entries delivered more than ``max_deliveries`` times go to the dead letters.

        Raises:
            Abandoned: The pool stopped waiting; the batch stays pending in Redis.
        """
        started = time.monotonic()
        limit = self.options.max_deliveries
        rejected: list[Rejected] = []
        fresh: list[Entry] = []
        for entry in entries:
            if entry.deliveries > limit:
                reason = (
                    f"delivered {entry.deliveries - 1} times without being written "
                    f"(max_deliveries={limit})"
                )
                rejected.append(Rejected(entry, reason))
            else:
                fresh.append(entry)
        batch = coalesce(fresh, json_text=self._json_text(partition))
        ids = [entry.stream_id for entry in entries]
        latest = _latest_ids(entries)
        return self._finish(
            partition,
            batch=batch,
            rejected=rejected,
            ids=ids,
            started=started,
            ack=lambda: partition.ack(self.backend, latest, ids),
        )

    def process_raw(self, partition: Partition, raw: Sequence[RawEntry]) -> int:
        """:meth:`process` for newly read entries (delivered once), as read."""
        started = time.monotonic()
        batch = coalesce_raw(raw, json_text=self._json_text(partition))
        latest: Mapping[str, str | bytes] = batch.latest
        # Nothing coalesced: the ids are the latest ones, in order (sent once).
        same = len(latest) == len(raw) and not batch.rejected
        if not same:  # keys written twice, or malformed entries
            latest = _latest_ids([entry_of(item) for item in raw])
        ids = [sid for sid, _ in raw]
        return self._finish(
            partition,
            batch=batch,
            rejected=[],
            ids=ids,
            started=started,
            # Read in stream order: the last is the newest.
            ack=lambda: partition.ack(self.backend, latest, ids, newest=ids[-1], same=same),
        )

    def _json_text(self, partition: Partition) -> bool:
        return accepts_json_text(self.stores[partition.namespace])

    def _finish(
        self,
        partition: Partition,
        *,
        batch: Coalesced,
        rejected: list[Rejected],
        ids: Sequence[str | bytes],
        started: float,
        ack: Callable[[], int],
    ) -> int:
        with _instrument.activity(
            _instrument.DRAIN_BATCH,
            namespace=partition.namespace,
            partition=partition.index,
            records=len(ids),
            rows=len(batch.records),
        ):
            return self._commit(
                partition, batch=batch, rejected=rejected, ids=ids, started=started, ack=ack
            )

    def _commit(
        self,
        partition: Partition,
        *,
        batch: Coalesced,
        rejected: list[Rejected],
        ids: Sequence[str | bytes],
        started: float,
        ack: Callable[[], int],
    ) -> int:
        rejected += batch.rejected
        failed: list[StoreError | Exception] = []
        poisoned = write_bisecting(
            lambda records: self._write(partition, records, failed, len(ids)), batch.records
        )
        for record, error in poisoned:
            rejected.append(Rejected(batch.winner(record.key), error, record.version))
        if rejected:
            self._redis(lambda: dead_letter(self.backend, partition, rejected, self._now_ms()))
        self._redis(ack)
        rows = len(batch.records) - len(poisoned)
        self.throughput.record(rows, len(ids))
        if rejected:
            self._report_dead(partition, rejected)
        signals.drain_batch_written.send(
            sender=self.sender,
            namespace=partition.namespace,
            partition=partition.index,
            records=len(ids),
            rows=rows,
            duration=time.monotonic() - started,
        )
        return len(ids)

    def _write(
        self,
        partition: Partition,
        records: Sequence[Record],
        failed: list[StoreError | Exception],
        size: int,
    ) -> None:
        """``store.write`` until it succeeds or fails for good (then raise for bisection)."""
        store = self.stores[partition.namespace]
        breaker = self.breakers[partition.namespace]
        attempt = 0
        while True:
            if self.abandon.is_set():
                raise Abandoned(partition.name)
            wait = breaker.wait_time()
            if wait > 0:
                self.abandon.wait(wait)
                continue
            try:
                store.write(partition.namespace, records)
            except StoreError as exc:
                if not exc.transient:
                    breaker.record_success()  # the database answered
                    self._report_failure(partition, size, exc, failed)
                    raise
                breaker.record_failure()
                self._report_failure(partition, size, exc, failed)
                delay = backoff_delay(attempt, self.options.backoff_base, self.options.backoff_max)
                logger.warning(
                    "drain: %s: store write failed (transient, retry %d in %.2fs): %s",
                    partition.name,
                    attempt + 1,
                    delay,
                    exc,
                )
                attempt += 1
                self.abandon.wait(delay)
                continue
            except Exception as exc:
                breaker.record_success()
                self._report_failure(partition, size, exc, failed)
                raise
            breaker.record_success()
            return

    def _report_failure(
        self,
        partition: Partition,
        size: int,
        exc: Exception,
        failed: list[StoreError | Exception],
    ) -> None:
        transient = isinstance(exc, StoreError) and exc.transient
        if not transient and failed:
            return  # one report per batch for bisection, not one per half
        if not transient:
            failed.append(exc)
            logger.warning(
                "drain: %s: store refused a batch of %d (bisecting for poison records): %s",
                partition.name,
                size,
                exc,
            )
        signals.drain_batch_failed.send(
            sender=self.sender,
            namespace=partition.namespace,
            partition=partition.index,
            records=size,
            error=exc,
            transient=transient,
        )

    def _report_dead(self, partition: Partition, rejected: Sequence[Rejected]) -> None:
        for item in rejected:
            key = item.entry.fields.get(b"k", b"?").decode("utf-8", "replace")
            logger.error(
                "drain: %s: record %s (key %r) dead-lettered after %d delivery(ies): %s",
                partition.name,
                item.entry.stream_id,
                key,
                item.entry.deliveries,
                item.error,
            )
            signals.dead_lettered.send(
                sender=self.sender,
                namespace=partition.namespace,
                keys=[key],
                error=item.error,
                attempts=item.entry.deliveries,
            )

    def _redis(self, call: Callable[[], T]) -> T:
        """Run ``call`` until Redis answers (the batch is committed; it must be acked)."""
        attempt = 0
        while True:
            try:
                return call()
            except REDIS_ERRORS as exc:
                if self.abandon.is_set():
                    raise Abandoned(str(exc)) from exc
                delay = backoff_delay(attempt, self.options.backoff_base, self.options.backoff_max)
                logger.warning("drain: redis unavailable after a commit (retrying): %s", exc)
                attempt += 1
                self.abandon.wait(max(delay, 0.05))

    def _now_ms(self) -> int:
        with self.backend.commands("drain TIME") as client:
            seconds, micros = client.time()
        return int(seconds) * 1000 + int(micros) // 1000


def _latest_ids(entries: Sequence[Entry]) -> dict[str, str]:
    """Key -> its newest stream id among ``entries`` (malformed entries have no key)."""
    latest: dict[str, str] = {}
    for entry in entries:
        raw = entry.fields.get(b"k")
        if raw is None:
            continue
        key = raw.decode("utf-8", "replace")
        newest = latest.get(key)
        if newest is None or id_order(entry.stream_id) > id_order(newest):
            latest[key] = entry.stream_id
    return latest
