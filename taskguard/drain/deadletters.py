"""Dead letters: reading them, and putting them back in the queue once the cause is fixed.

A record the store refuses for good (a constraint it violates, a payload that cannot be
decoded, or one delivered more than ``max_deliveries`` times) is copied to the namespace's
dead-letter stream and acknowledged, so it never blocks its partition. Each dead letter
keeps the entry's fields (``k``, ``v``, ``d``, ``c``) and adds ``V`` (its version), ``p``
(partition), ``id`` (the original stream id), ``error``, ``attempts`` and ``at`` (ms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from taskguard.backend.redis import RedisBackend

from .partition import Partition

__all__ = ["DeadLetter", "dead_letters", "requeue_dead_letters"]

_QUEUED_FIELDS = (b"k", b"v", b"d", b"c")


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered record.

    Attributes:
        id: Its id in the dead-letter stream.
        key: The cache key.
        version: The version of the write.
        partition: The partition it came from.
        error: Why it was dead-lettered.
        attempts: How many times it had been delivered.
        deleted: True for a delete.
    """

    id: str
    key: str
    version: int
    partition: int
    error: str
    attempts: int
    deleted: bool


def _decode(sid: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        id=sid.decode(),
        key=fields.get(b"k", b"").decode("utf-8", "replace"),
        version=int(fields.get(b"V", b"0")),
        partition=int(fields.get(b"p", b"0")),
        error=fields.get(b"error", b"").decode("utf-8", "replace"),
        attempts=int(fields.get(b"attempts", b"0")),
        deleted=fields.get(b"d") == b"1",
    )


def dead_letters(backend: RedisBackend, namespace: str, *, limit: int = 100) -> list[DeadLetter]:
    """The oldest ``limit`` dead letters of ``namespace``.

    Raises:
        BackendUnavailable: Redis could not be reached.
    """
    with backend.commands("reading dead letters") as client:
        items: Any = client.xrange(backend.keys.dead_letters(namespace), "-", "+", count=limit)
    return [_decode(sid, fields) for sid, fields in items]


def requeue_dead_letters(backend: RedisBackend, namespace: str, *, limit: int | None = None) -> int:
    """Queue ``namespace``'s dead letters again, oldest first, and remove them.

    Each is added to its partition's stream with ``V`` = its original version, so it
    cannot overwrite a newer write of its key; the dirty index is left alone (a newer
    write may own it). A crash between the two steps re-queues a record twice, which the
    versioned write makes harmless.

    Args:
        backend: The Redis backend (same prefix as the cache).
        namespace: The write-behind namespace.
        limit: Re-queue at most this many (all when None).

    Returns:
        How many were re-queued.

    Raises:
        BackendUnavailable: Redis could not be reached.
    """
    source = backend.keys.dead_letters(namespace)
    done = 0
    while limit is None or done < limit:
        chunk = 500 if limit is None else min(500, limit - done)
        with backend.commands("re-queueing dead letters") as client:
            items: Any = client.xrange(source, "-", "+", count=chunk)
            if not items:
                break
            pipe = client.pipeline(transaction=False)
            for _sid, fields in items:
                partition = Partition.of(backend.keys, namespace, int(fields.get(b"p", b"0")))
                queued: dict[Any, Any] = {
                    name: fields[name] for name in _QUEUED_FIELDS if name in fields
                }
                queued[b"V"] = fields[b"V"]
                pipe.xadd(partition.stream, queued)
            pipe.execute()
            client.xdel(source, *[sid for sid, _ in items])
        done += len(items)
    return done
