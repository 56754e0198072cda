"""The Redis key schema: the only place that builds key names.

Every key is ``<prefix>:{<tag>}:<kind>:<name>[:<key>]``. The part in braces is a Redis
Cluster hash tag. It defaults to the prefix, so every key taskguard writes lives in one
slot and a task's admission (which may touch a rate limit, a lock and a semaphore at once)
stays one atomic script call on Cluster too. See docs/design.md, "Key schema".
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KeySchema"]


def _clean(part: str) -> str:
    # Braces would start a second hash tag and move the key to another slot.
    return part.replace("{", "(").replace("}", ")")


@dataclass(frozen=True)
class KeySchema:
    """Builds every key name from one prefix and one hash tag.

    Args:
        prefix: Leading namespace of every key, e.g. ``"tg"`` or ``"myapp:tg"``.
        tag: The Cluster hash tag; defaults to ``prefix``.
    """

    prefix: str = "tg"
    tag: str | None = None

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "{} \n\t"):
            raise ValueError(
                f"invalid key prefix {self.prefix!r}: it must be non-empty, without braces "
                "or whitespace"
            )

    @property
    def _head(self) -> str:
        return f"{self.prefix}:{{{_clean(self.tag or self.prefix)}}}"

    def rate_limit(self, name: str, key: str | None = None) -> str:
        """The GCRA state of rate limit ``name`` for bucket ``key``."""
        return self._named("rl", name, key)

    def lock(self, name: str, key: str | None = None) -> str:
        """The owner of lock ``name`` for ``key``."""
        return self._named("lock", name, key)

    def fence(self, name: str, key: str | None = None) -> str:
        """The last fencing token handed out for lock ``name`` / ``key``."""
        return self._named("fence", name, key)

    def wakeup(self, name: str, key: str | None = None) -> str:
        """The list a release pushes to, waking one blocked waiter of lock ``name``."""
        return self._named("wake", name, key)

    def slots(self, name: str, key: str | None = None) -> str:
        """The holders of concurrency limit ``name`` for ``key`` (a sorted set)."""
        return self._named("slots", name, key)

    def slot_wakeup(self, name: str, key: str | None = None) -> str:
        """The list a slot release pushes to, waking blocked waiters."""
        return self._named("swake", name, key)

    def breaker(self, name: str) -> str:
        """The state of circuit breaker ``name`` (a hash)."""
        return self._named("cb", name, None)

    def breaker_window(self, name: str) -> str:
        """The sliding window of breaker ``name``'s outcomes."""
        return self._named("cbw", name, None)

    def breaker_probes(self, name: str) -> str:
        """The half-open probe leases of breaker ``name`` (a sorted set)."""
        return self._named("cbp", name, None)

    def unique(self, name: str, key: str | None = None) -> str:
        """The publish-time uniqueness claim of task ``name`` for ``key``."""
        return self._named("uniq", name, key)

    # ------------------------------------------------------------------ cache
    # A cache namespace is split into partitions (crc32(key) mod P). Each partition has
    # its own hash tag, so a write-behind write (value + stream entry + dirty mark) is one
    # script call on Cluster, and partitions spread over the cluster's slots. Cache keys
    # are user data and are kept verbatim: only the first {...} of a name is its hash tag.

    def _cache_head(self, namespace: str, partition: int) -> str:
        return f"{self.prefix}:{{{_clean(self.tag or self.prefix)}:c:{namespace}:{partition}}}"

    def cache_value(self, namespace: str, partition: int, key: str) -> str:
        """The cached value of ``key`` in ``namespace`` (a string with a TTL)."""
        return f"{self._cache_head(namespace, partition)}:v:{key}"

    def cache_flight(self, namespace: str, partition: int, key: str) -> str:
        """The single-flight lock of a cache-aside load of ``key``."""
        return f"{self._cache_head(namespace, partition)}:f:{key}"

    def cache_stream(self, namespace: str, partition: int) -> str:
        """The write-behind stream of one partition (entries: see ``cache/records.py``)."""
        return f"{self._cache_head(namespace, partition)}:wb"

    def cache_dirty(self, namespace: str, partition: int) -> str:
        """The dirty index of one partition: key -> stream id of its newest queued write."""
        return f"{self._cache_head(namespace, partition)}:dirty"

    def drain_lease(self, namespace: str, partition: int) -> str:
        """The lease naming the one drain consumer of a partition."""
        return f"{self._cache_head(namespace, partition)}:lease"

    def dead_letters(self, namespace: str) -> str:
        """The dead-letter stream of ``namespace``'s write-behind records."""
        return f"{self._head}:dlq:{namespace}"

    def write_behind_namespaces(self) -> str:
        """A hash of every write-behind namespace: name -> partition count."""
        return f"{self._head}:wbns"

    def drain_pools(self) -> str:
        """The live drain pools (a sorted set: consumer name -> expiry in ms)."""
        return f"{self._head}:wbns:pools"

    def guard(self, kind: str, name: str, key: str | None = None) -> str:
        """The state of a guard of another kind (``kind`` is its short code, e.g. ``"q"``).

        For guards added through the op-kind registry: their keys follow the same schema
        (one hash tag) without an edit here.
        """
        if not kind or not kind.isalnum():
            raise ValueError(f"a key kind must be alphanumeric, got {kind!r}")
        return self._named(kind, name, key)

    def breaker_events(self) -> str:
        """The pub/sub channel every hot-path breaker of this prefix listens on."""
        return f"{self.prefix}:breaker-events"

    def _named(self, kind: str, name: str, key: str | None) -> str:
        base = f"{self._head}:{kind}:{_clean(name)}"
        return f"{base}:{_clean(key)}" if key else base

    def pattern(self) -> str:
        """A SCAN pattern matching every key of this schema."""
        return f"{self._head}:*"

    def cache_stream_pattern(self) -> str:
        """A SCAN pattern matching every write-behind stream (:meth:`cache_stream`) of
        every namespace and partition. It can match other keys too (a cached value whose
        key ends the same way): scan with ``TYPE stream`` and check each match against
        :meth:`cache_stream`."""
        # _cache_head(namespace, p) ends with ":<namespace>:<p>}"; keep what comes before.
        head = self._cache_head("", 0)[: -len(":0}")]
        escaped = "".join(f"\\{c}" if c in "*?[]\\" else c for c in head)
        return f"{escaped}*}}:wb"
