"""Reading the guards' state: one SCAN sweep of the prefix's guard keys, then pipelined
reads, each pipeline at most :data:`PIPELINE_CHUNK` commands (never ``KEYS``; nothing is
written, so reading never changes what it reads: expired slot holders and probes are
filtered out here, not pruned).

The sweep matches :meth:`KeySchema.guard_pattern` (``<prefix>:{<tag>}:*``), so cached
values, under their partitions' own hash tags, are walked past by the server but never
sent. Every guard key shares one hash tag, hence one slot: on a single server or a
Cluster node, one sweep sees them all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from taskguard.backend.redis import RedisBackend
from taskguard.backend.topology import is_cluster, scan_page
from taskguard.guards.quota import QUOTA_KEY_KIND
from taskguard.keys import KeySchema

from .derive import breaker_status, bucket, lock_holder, quota_usage, slot_set, text
from .model import BreakerStatus, LockHolder, QuotaUsage, RateBucket, SlotSet

__all__ = ["PIPELINE_CHUNK", "SCAN_COUNT", "GuardState", "Ref", "read_guards", "scan_guards"]

#: Keys the server walks per SCAN call: a few calls for tens of thousands of keys.
SCAN_COUNT = 10_000
#: Commands per pipelined round trip (bounds the memory of one reply).
PIPELINE_CHUNK = 10_000

#: Key kinds read (keys.py's codes; the quota's comes from its guard module).
RATE, LOCK, UNIQUE, SLOTS, BREAKER, DEAD_LETTERS = "rl", "lock", "uniq", "slots", "cb", "dlq"
_READ = {RATE, LOCK, UNIQUE, SLOTS, BREAKER, DEAD_LETTERS, QUOTA_KEY_KIND}

#: A command for a pipeline: (method name, positional arguments, keyword arguments).
Command = tuple[str, tuple[Any, ...], dict[str, Any]]


class Ref(NamedTuple):
    """A guard key found by the sweep, with the name and key it was built from."""

    redis_key: str
    name: str
    key: str | None


@dataclass(frozen=True)
class GuardState:
    """What :func:`read_guards` found (see :class:`taskguard.status.Status`)."""

    server_time: float
    rate_limits: tuple[RateBucket, ...]
    locks: tuple[LockHolder, ...]
    slots: tuple[SlotSet, ...]
    breakers: tuple[BreakerStatus, ...]
    quotas: tuple[QuotaUsage, ...]
    dead_letter_namespaces: tuple[str, ...]


def scan_guards(client: Any, keys: KeySchema) -> dict[str, list[Ref]]:
    """Every guard key of ``keys`` whose kind is read here, by kind, sorted by name/key."""
    found: dict[str, list[Ref]] = {}
    seen: set[str] = set()
    cursor = 0
    pattern = keys.guard_pattern()
    while True:
        cursor, names = scan_page(client, cursor, match=pattern, count=SCAN_COUNT)
        for raw in names:
            name = text(raw)
            if name in seen:  # SCAN may return a key twice
                continue
            seen.add(name)
            parts = keys.guard_parts(name)
            if parts is not None and parts[0] in _READ:
                found.setdefault(parts[0], []).append(Ref(name, parts[1], parts[2]))
        if int(cursor) == 0:
            break
    for refs in found.values():
        refs.sort(key=lambda ref: (ref.name, ref.key is not None, ref.key or ""))
    return found


def _pipelined(client: Any, commands: Sequence[Command]) -> list[Any]:
    """The replies of ``commands``, in order; a failed command's reply is ``None``."""
    replies: list[Any] = []
    for start in range(0, len(commands), PIPELINE_CHUNK):
        pipe = client.pipeline(transaction=False)
        for method, args, kwargs in commands[start : start + PIPELINE_CHUNK]:
            getattr(pipe, method)(*args, **kwargs)
        replies.extend(pipe.execute(raise_on_error=False))
    return [None if isinstance(reply, Exception) else reply for reply in replies]


def _mget(client: Any, names: Sequence[str]) -> list[Any]:
    """``GET`` of each of ``names``, as ``MGET`` s of at most :data:`PIPELINE_CHUNK` keys in
    one round trip (one command per chunk, not per key: the client packs far less)."""
    chunks = [names[i : i + PIPELINE_CHUNK] for i in range(0, len(names), PIPELINE_CHUNK)]
    if is_cluster(client):  # a cluster pipeline refuses MGET: one MGET per chunk and slot
        return [value for chunk in chunks for value in client.mget_nonatomic(list(chunk))]
    replies = _pipelined(client, [("mget", (list(chunk),), {}) for chunk in chunks])
    values: list[Any] = []
    for chunk, reply in zip(chunks, replies, strict=True):
        values.extend(reply if reply is not None else [None] * len(chunk))
    return values


def _commands(keys: KeySchema, found: Mapping[str, list[Ref]]) -> list[Command]:
    """The per-key reads of every key found, in the order :func:`read_guards` consumes
    them (the string values come by :func:`_mget`)."""
    members = {"withscores": True}
    out: list[Command] = [("pttl", (r.redis_key,), {}) for r in found.get(LOCK, ())]
    out += [("pttl", (r.redis_key,), {}) for r in found.get(UNIQUE, ())]
    out += [("zrange", (r.redis_key, 0, -1), members) for r in found.get(SLOTS, ())]
    for r in found.get(BREAKER, ()):
        out += [("hgetall", (r.redis_key,), {}), ("type", (keys.breaker_window(r.name),), {})]
        out.append(("zrange", (keys.breaker_probes(r.name), 0, -1), members))
    for r in found.get(QUOTA_KEY_KIND, ()):
        out += [("hmget", (r.redis_key, "w", "c"), {}), ("pttl", (r.redis_key,), {})]
    return out


def read_guards(
    backend: RedisBackend, limits: Mapping[str, tuple[float, int]] | None = None
) -> GuardState:
    """Read every rate-limit bucket, lock, claim, slot set, breaker and quota of the
    backend's prefix.

    Args:
        backend: The Redis backend (its key schema picks the prefix).
        limits: Limiter name -> (seconds per token, burst), for the buckets whose level
            in tokens should be shown.

    Raises:
        BackendUnavailable: Redis could not be reached.
        BackendError: Redis refused a command.
    """
    keys = backend.keys
    limits = limits or {}
    with backend.commands("status read") as client:
        found = scan_guards(client, keys)
        seconds, micros = client.time()
        now_us = int(seconds) * 1_000_000 + int(micros)
        now_ms = now_us // 1000
        rate_refs, lock_refs = found.get(RATE, []), found.get(LOCK, [])
        unique_refs = found.get(UNIQUE, [])
        values = iter(
            _mget(
                client,
                [r.redis_key for r in (*rate_refs, *lock_refs, *unique_refs)]
                + [keys.sibling(r.redis_key, "fence") for r in lock_refs],
            )
        )
        tats = [next(values) for _ in rate_refs]
        owners = [next(values) for _ in lock_refs]
        claimants = [next(values) for _ in unique_refs]
        replies = iter(_pipelined(client, _commands(keys, found)))
        rates = [
            bucket(r.name, r.key, tat, now_us, limits.get(r.name))
            for r, tat in zip(rate_refs, tats, strict=True)
        ]
        locks = [
            lock_holder(
                LOCK,
                r.name,
                r.key,
                owner=owner,
                pttl=next(replies),
                fence=next(values),
                now_us=now_us,
            )
            for r, owner in zip(lock_refs, owners, strict=True)
        ]
        locks += [
            lock_holder("unique", r.name, r.key, owner=owner, pttl=next(replies))
            for r, owner in zip(unique_refs, claimants, strict=True)
        ]
        slots = [slot_set(r.name, r.key, next(replies), now_ms) for r in found.get(SLOTS, ())]
        raw_breakers = [
            (r.name, next(replies), next(replies), next(replies)) for r in found.get(BREAKER, ())
        ]
        quotas = []
        for r in found.get(QUOTA_KEY_KIND, ()):
            start, used = next(replies) or (None, None)
            quotas.append(quota_usage(r.name, r.key, start=start, used=used, pttl=next(replies)))
        # A time window is a hash of per-second counters: read only those.
        timed = [name for name, _, kind, _ in raw_breakers if text(kind) == "hash"]
        windows = dict(
            zip(
                timed,
                _pipelined(client, [("hgetall", (keys.breaker_window(n),), {}) for n in timed]),
                strict=True,
            )
        )
    breakers = [
        breaker_status(
            name,
            fields=fields,
            window_type=kind,
            window=windows.get(name),
            probes=probes,
            now_ms=now_ms,
        )
        for name, fields, kind, probes in raw_breakers
    ]
    return GuardState(
        server_time=now_us / 1_000_000,
        rate_limits=tuple(b for b in rates if b is not None),
        locks=tuple(h for h in locks if h is not None),
        slots=tuple(s for s in slots if s is not None),
        breakers=tuple(b for b in breakers if b is not None),
        quotas=tuple(q for q in quotas if q is not None),
        dead_letter_namespaces=tuple(r.name for r in found.get(DEAD_LETTERS, ())),
    )
