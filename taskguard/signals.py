"""taskguard's signals, in Celery's own style (:class:`celery.utils.dispatch.Signal`).

Connect as you would to a Celery signal::

    from taskguard import signals

    @signals.task_deferred.connect
    def on_deferred(sender, task_id, delay, reason, **kwargs):
        print(f"{sender.name}[{task_id}] deferred {delay:.2f}s: {reason}")

``sender`` is the task. Handlers run synchronously in the worker; exceptions in them are
logged by Celery and never stop the task.
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

__all__ = [
    "circuit_state_changed",
    "dead_lettered",
    "deferral_exhausted",
    "drain_batch_failed",
    "drain_batch_written",
    "duplicate_rejected",
    "guard_acquired",
    "guard_denied",
    "guard_released",
    "lease_lost",
    "lock_conflict",
    "shadow_denied",
    "slot_acquired",
    "slot_denied",
    "task_deferred",
    "writebehind_backpressure",
]

#: All of a task's guards admitted it. Args: ``task_id``, ``guards``, ``degraded``.
guard_acquired = Signal(name="guard_acquired")

#: A task's run ended and its guards were released. Args: ``task_id``, ``guards``,
#: ``outcome`` (``success``, ``failure``, ``retry``, ``ignored``, ``rejected``,
#: ``soft_time_limit`` or ``aborted``), ``duration`` (seconds).
guard_released = Signal(name="guard_released")

#: A guard refused a task. Args: ``task_id``, ``guard``, ``key``, ``retry_after``,
#: ``degraded``.
guard_denied = Signal(name="guard_denied")

#: A guard in shadow mode would have refused a run that went on (docs/observability.md,
#: "Shadow mode"). Args: ``task_id``, ``guard``, ``key``, ``retry_after``.
shadow_denied = Signal(name="shadow_denied")

#: A denied task was re-published to run later. Args: ``task_id``, ``delay``,
#: ``deferrals`` (count including this one), ``reserved``, ``reason``.
task_deferred = Signal(name="task_deferred")

#: A task hit its deferral cap. Args: ``task_id``, ``deferrals``, ``age``, ``policy``.
deferral_exhausted = Signal(name="deferral_exhausted")

#: A task's run-time lock was held by another run. Args: ``task_id``, ``key``,
#: ``retry_after``, ``action`` (``defer``, ``skip`` or ``fail``).
lock_conflict = Signal(name="lock_conflict")

#: A task's lease (lock, slot, uniqueness claim) was found expired or taken over, by the
#: heartbeat or at release; sent once per lease. Args: ``task_id``, ``key``.
lease_lost = Signal(name="lease_lost")

#: Uniqueness refused a duplicate. Args: ``task_id`` (the duplicate's), ``holder`` (the
#: id holding the claim, when known), ``key``, ``stage`` (``publish`` or ``run``).
duplicate_rejected = Signal(name="duplicate_rejected")

#: A task took a concurrency slot. Args: ``task_id``, ``key``, ``limit``.
slot_acquired = Signal(name="slot_acquired")

#: Every concurrency slot of a key was taken (after any bounded wait). Args:
#: ``task_id``, ``key``, ``limit``, ``retry_after``.
slot_denied = Signal(name="slot_denied")

#: A circuit breaker changed state, seen by the process that made the transition. Args:
#: ``name``, ``old``, ``new`` (``closed``, ``open``, ``half_open``), ``reason``,
#: ``task_id`` (the task whose outcome made it, if any). ``sender`` is None.
circuit_state_changed = Signal(name="circuit_state_changed")

#: The drain pool committed a batch to the store. Args: ``namespace``, ``partition``,
#: ``records`` (stream entries acked), ``rows`` (rows written after coalescing),
#: ``duration`` (seconds). ``sender`` is the pool.
drain_batch_written = Signal(name="drain_batch_written")

#: A batch could not be written. Args: ``namespace``, ``partition``, ``records``,
#: ``error`` (the exception), ``transient`` (True: it will be retried after a backoff).
drain_batch_failed = Signal(name="drain_batch_failed")

#: Write-behind records were moved to the dead-letter stream. Args: ``namespace``,
#: ``keys``, ``error`` (text), ``attempts``.
dead_lettered = Signal(name="dead_lettered")

#: A write-behind write met a full queue. Args: ``namespace``, ``key``, ``backlog``,
#: ``policy`` (``write_through``, ``raise`` or ``block``).
writebehind_backpressure = Signal(name="writebehind_backpressure")
