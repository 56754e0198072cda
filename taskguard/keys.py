"""The Redis key schema: the only place that builds key names.

Guard state is ``<prefix>:{<tag>}:<kind>:<name>[:<key>]``; cache state is
``<prefix>:{<tag>:c:<namespace>:<partition>}:<what>[:<key>]``. The part in braces is a
Redis Cluster hash tag. It defaults to the prefix, so every guard key lives in one slot
and a task's admission (which may touch a rate limit, a lock and a semaphore at once)
stays one atomic script call. A *spread* schema (``spread=True``, which the Redis
backend sets on a Cluster) gives a keyed guard's keys the tag of its bucket key instead,
``<prefix>:{<tag>:k:<key or tag source>}:<kind>:<name>:<key>``, so per-key state spreads
over the cluster's slots, and guards keyed alike share a slot. See docs/design.md, "Key
schema".

User strings are escaped, never replaced, so the mapping from (kind, name, key) to a key
name is injective, and no user string can open or close a hash tag:

* a name, the tag or a namespace, each followed by ``:`` in a key, has ``%``, ``:``,
  ``{``, ``}`` and every non-printable character (control characters, line separators,
  spaces other than ``" "``) percent-escaped as its UTF-8 bytes (``:`` -> ``%3A``);
* a key, always last, keeps its ``:`` (``tenant:7`` stays readable) and has the rest
  escaped alike;
* a key of ``None`` (one key for every call) adds nothing, while ``""`` adds ``":"``.

The prefix is written as it is: it may hold no braces, whitespace or control characters
(see :func:`taskguard._validate.key_prefix`), so the first ``{`` of a key ends it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import cached_property

from taskguard._escape import glob as _glob
from taskguard._escape import key as _key
from taskguard._escape import part as _part
from taskguard._escape import unescape as _unescape
from taskguard._validate import key_prefix
from taskguard._validate import name as check_name

__all__ = ["RESERVED_KINDS", "KeySchema"]

#: Kind codes of the keys this module builds itself; :meth:`KeySchema.guard` refuses them.
RESERVED_KINDS = frozenset(
    {"rl", "lock", "fence", "wake", "slots", "swake", "cb", "cbw", "cbp", "uniq", "dlq", "wbns"}
    | {"park", "parkfair", "parkmsg", "parkmeta", "parkdue", "parkout", "parkheads"}
    | {"lim", "limc", "limq"}
)


@dataclass(frozen=True)
class KeySchema:
    """Builds every key name from one prefix and one hash tag.

    Args:
        prefix: Leading namespace of every key, e.g. ``"tg"`` or ``"myapp:tg"``: at most
            200 characters, without braces, whitespace or control characters.
        tag: The Cluster hash tag; defaults to ``prefix``. Any string (it is escaped).
        spread: Give keyed guard state the hash tag of its key (or of the ``tag`` source
            a guard names) rather than the schema's one tag. Set by the Redis backend on a
            Cluster; a schema on one server or Sentinel keeps one tag.

    Raises:
        ConfigurationError: An invalid prefix (naming ``key_prefix``) or tag.

    Example:
        >>> keys = KeySchema("tg")
        >>> keys.rate_limit("api", "tenant:7")
        'tg:{tg}:rl:api:tenant:7'
        >>> keys.rate_limit("api:tenant", "7")
        'tg:{tg}:rl:api%3Atenant:7'
        >>> keys.lock("proj.render", "{a}")
        'tg:{tg}:lock:proj.render:%7Ba%7D'
    """

    prefix: str = "tg"
    tag: str | None = None
    spread: bool = False

    def __post_init__(self) -> None:
        key_prefix(self.prefix)
        if self.tag is not None:
            check_name(self.tag, "tag")

    @cached_property
    def _tag(self) -> str:
        return _part(self.prefix if self.tag is None else self.tag, "tag")

    @cached_property
    def _head(self) -> str:
        return f"{self.prefix}:{{{self._tag}}}"

    def rate_limit(self, name: str, key: str | None = None, *, tag: str | None = None) -> str:
        """The GCRA state of rate limit ``name`` for bucket ``key``."""
        return self._named("rl", name, key, tag)

    def lock(self, name: str, key: str | None = None, *, tag: str | None = None) -> str:
        """The owner of lock ``name`` for ``key``."""
        return self._named("lock", name, key, tag)

    def fence(self, name: str, key: str | None = None, *, tag: str | None = None) -> str:
        """The last fencing token handed out for lock ``name`` / ``key``."""
        return self._named("fence", name, key, tag)

    def wakeup(self, name: str, key: str | None = None, *, tag: str | None = None) -> str:
        """The list a release pushes to, waking one blocked waiter of lock ``name``."""
        return self._named("wake", name, key, tag)

    def slots(self, name: str, key: str | None = None, *, tag: str | None = None) -> str:
        """The holders of concurrency limit ``name`` for ``key`` (a sorted set)."""
        return self._named("slots", name, key, tag)

    def slot_wakeup(self, name: str, key: str | None = None, *, tag: str | None = None) -> str:
        """The list a slot release pushes to, waking blocked waiters."""
        return self._named("swake", name, key, tag)

    def limit_overrides(self, name: str) -> str:
        """Limits of rate limiter ``name`` set at run time (a hash: ``"*"`` or
        ``"k:<bucket>"`` -> ``"<interval_us> <burst>"``; see ``taskguard limit set``)."""
        return self._named("lim", name, None)

    def cap_overrides(self, name: str) -> str:
        """Slot counts of concurrency cap ``name`` set at run time (a hash: ``"*"`` or
        ``"k:<key>"`` -> ``"<limit>"``; see ``taskguard limit set --kind cap``)."""
        return self._named("limc", name, None)

    def quota_overrides(self, name: str) -> str:
        """Allowances of quota ``name`` set at run time (a hash: ``"*"`` or ``"k:<key>"``
        -> ``"<calls> <period>"``; see ``taskguard limit set --kind quota``)."""
        return self._named("limq", name, None)

    def breaker(self, name: str) -> str:
        """The state of circuit breaker ``name`` (a hash)."""
        return self._named("cb", name, None)

    def breaker_window(self, name: str) -> str:
        """The sliding window of breaker ``name``'s outcomes."""
        return self._named("cbw", name, None)

    def breaker_probes(self, name: str) -> str:
        """The half-open probe leases of breaker ``name`` (a sorted set)."""
        return self._named("cbp", name, None)

    def unique(self, name: str, key: str | None = None, *, tag: str | None = None) -> str:
        """The publish-time uniqueness claim of task ``name`` for ``key``."""
        return self._named("uniq", name, key, tag)

    # ------------------------------------------------------------------ cache
    # A cache namespace is split into partitions (crc32(key) mod P). Each partition has
    # its own hash tag, so a write-behind write (value + stream entry + dirty mark) is one
    # script call on Cluster, and partitions spread over the cluster's slots. Cache keys
    # are escaped like guard keys: a user's braces never reach the key name.

    def _cache_head(self, namespace: str, partition: int) -> str:
        index = operator.index(partition)
        if index < 0:
            raise ValueError(f"a partition is an index >= 0, got {partition!r}")
        return f"{self.prefix}:{{{self._tag}:c:{_part(namespace, 'namespace')}:{index}}}"

    def cache_value(self, namespace: str, partition: int, key: str) -> str:
        """The cached value of ``key`` in ``namespace`` (a string with a TTL)."""
        return f"{self._cache_head(namespace, partition)}:v:{_key(key)}"

    def cache_flight(self, namespace: str, partition: int, key: str) -> str:
        """The single-flight lock of a cache-aside load of ``key``."""
        return f"{self._cache_head(namespace, partition)}:f:{_key(key)}"

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
        return f"{self._head}:dlq:{_part(namespace, 'namespace')}"

    def write_behind_namespaces(self) -> str:
        """A hash of every write-behind namespace: name -> partition count."""
        return f"{self._head}:wbns"

    def drain_pools(self) -> str:
        """The live drain pools (a sorted set: consumer name -> expiry in ms)."""
        return f"{self._head}:wbns:pools"

    def guard(self, kind: str, name: str, key: str | None = None, *, tag: str | None = None) -> str:
        """The state of a guard of another kind (``kind`` is its short code, e.g. ``"q"``).

        For guards added through the op-kind registry: their keys follow the same schema
        (one hash tag) without an edit here. The codes of this module's own keys
        (:data:`RESERVED_KINDS`) are refused, so no two kinds share keys.
        """
        if not isinstance(kind, str) or not kind.isalnum() or not kind.isascii():
            raise ValueError(f"a key kind must be ASCII letters and digits, got {kind!r}")
        if kind in RESERVED_KINDS:
            raise ValueError(f"key kind {kind!r} is taken by keys.py's own keys")
        return self._named(kind, name, key, tag)

    # ---------------------------------------------------------------- parked tasks
    # Tasks refused by a slot or a lock wait here until it has room (lib/park.lua). A
    # lot's key is its guard key with the kind code ``park`` in front, so it shares the
    # guard's hash tag, and (kind, name, key) -> lot stays injective. The lots' index
    # (messages, meta, due, out) lives under the same tag as the guard: the prefix's, or
    # on a spread schema a keyed guard's own (``of``: any key under that tag); the heads
    # of spread lots are listed in :meth:`park_heads` for the sweeper.

    def _head_of(self, key: str | None) -> str:
        if key is None or key.startswith(f"{self._head}:"):
            return self._head
        if self.spread and key.startswith(f"{self.prefix}:{{{self._tag}:k:"):
            return key[: key.index("}") + 1]  # an escaped source holds no '}'
        raise ValueError(f"{key!r} is not a guard key of {self._head!r}")

    def park_lot(self, guard_key: str) -> str:
        """The lot of tasks parked on guard key ``guard_key`` (a sorted set, FIFO)."""
        head = self._head_of(guard_key)
        return f"{head}:park:{guard_key[len(head) + 1 :]}"

    def park_fair(self, guard_key: str) -> str:
        """The fair-queuing state of ``guard_key``'s lot: its virtual time and each
        group's last position (a hash; see :mod:`taskguard.guards.fairness`)."""
        head = self._head_of(guard_key)
        return f"{head}:parkfair:{guard_key[len(head) + 1 :]}"

    def park_guard_key(self, lot: str) -> str:
        """The guard key a lot (:meth:`park_lot`) parks tasks on."""
        head = self._head_of(lot)
        if not lot.startswith(f"{head}:park:"):
            raise ValueError(f"{lot!r} is not a parking lot of {self._head!r}")
        return f"{head}:{lot[len(head) + 6 :]}"

    def park_messages(self, of: str | None = None) -> str:
        """Parked messages: ticket (task id) -> payload (a hash)."""
        return f"{self._head_of(of)}:parkmsg"

    def park_meta(self, of: str | None = None) -> str:
        """Every lot with tasks in it: lot -> its guard (a hash)."""
        return f"{self._head_of(of)}:parkmeta"

    def park_due(self, of: str | None = None) -> str:
        """When a sweep looks at each lot again (a sorted set: lot -> ms)."""
        return f"{self._head_of(of)}:parkdue"

    def park_out(self, of: str | None = None) -> str:
        """Tickets handed back whose message has not arrived yet (ticket -> deadline ms)."""
        return f"{self._head_of(of)}:parkout"

    def park_heads(self) -> str:
        """Spread schema: every tag with parked work, by its :meth:`park_due` key (a sorted
        set -> when the sweeper looks at it next, ms), under the prefix's tag."""
        return f"{self._head}:parkheads"

    def breaker_events(self, *, sharded: bool = False) -> str:
        """The pub/sub channel every hot-path breaker of this prefix listens on.

        ``sharded`` (Redis Cluster with ``SPUBLISH``): the channel carries the guard hash
        tag, so a script running on the breakers' slot may ``SPUBLISH`` to it.

        Example:
            >>> KeySchema("tg").breaker_events(), KeySchema("tg").breaker_events(sharded=True)
            ('tg:breaker-events', 'tg:{tg}:breaker-events')
        """
        if sharded:
            return f"{self._head}:breaker-events"
        return f"{self.prefix}:breaker-events"

    def events(self) -> str:
        """The pub/sub channel of this prefix's guard events (JSON; see
        :mod:`taskguard.events`). Channels have no hash tag: Redis Cluster sends a
        ``PUBLISH`` to every node, and the ACL rule ``&<prefix>:*`` covers it.

        Example:
            >>> KeySchema("tg").events()
            'tg:events'
        """
        return f"{self.prefix}:events"

    def _named(self, kind: str, name: str, key: str | None, tag: str | None = None) -> str:
        if key is None:
            return f"{self._head}:{kind}:{_part(name, 'name')}"
        if not self.spread:
            return f"{self._head}:{kind}:{_part(name, 'name')}:{_key(key)}"
        # The source is escaped like a name: no ':' or '}' in it, so the tag ends at the
        # first '}', and (source, kind, name, key) decodes back from the key.
        source = _part(key if tag is None else tag, "tag")
        return f"{self.prefix}:{{{self._tag}:k:{source}}}:{kind}:{_part(name, 'name')}:{_key(key)}"

    def shared(self, key: str) -> bool:
        """True when guard key ``key`` has the schema's one hash tag, so a script may
        touch it together with the schema's name-less keys (run-time limits, the parking
        index). Always true on a schema that does not spread; on a spread schema, only
        for unkeyed guards.

        Example:
            >>> spread = KeySchema("tg", spread=True)
            >>> spread.shared(spread.slots("s")), spread.shared(spread.slots("s", "7"))
            (True, False)
        """
        return key.startswith(f"{self._head}:")

    def sibling(self, key: str, kind: str) -> str:
        """The key of kind ``kind`` with guard key ``key``'s tag, name and key (a lock's
        fence from its lock key: right on a spread schema whatever tag placed it).

        Example:
            >>> KeySchema("tg", spread=True).sibling("tg:{tg:k:o}:lock:n:7", "fence")
            'tg:{tg:k:o}:fence:n:7'
        """
        tail = key.rsplit("}:", 1)[1] if "}:" in key else ""
        if self.guard_parts(key) is None or not tail.partition(":")[2]:
            raise ValueError(f"{key!r} is not a guard key of {self._head!r}")
        return f"{key[: len(key) - len(tail)]}{kind}:{tail.partition(':')[2]}"

    def guard_parts(self, key: str) -> tuple[str, str, str | None] | None:
        """``(kind, name, key)`` of a guard key this schema builds with a name (the
        inverse of :meth:`rate_limit`, :meth:`lock`, :meth:`guard`...; ``key`` is None for
        a key-less guard), or None for any other key (cache keys, another prefix, the
        schema's name-less keys such as :meth:`park_meta`).

        Example:
            >>> KeySchema("tg").guard_parts("tg:{tg}:rl:api%3Atenant:7")
            ('rl', 'api:tenant', '7')
            >>> KeySchema("tg").guard_parts("tg:{tg}:lock:report")
            ('lock', 'report', None)
        """
        head = f"{self._head}:"
        spread_head = f"{self.prefix}:{{{self._tag}:k:"
        if key.startswith(head):
            rest = key[len(head) :]
        elif self.spread and key.startswith(spread_head):
            _, brace, rest = key[len(spread_head) :].partition("}:")
            if not brace:
                return None
        else:
            return None
        kind, colon, rest = rest.partition(":")
        if not colon or not kind:
            return None
        name, colon, user_key = rest.partition(":")
        return kind, _unescape(name), _unescape(user_key) if colon else None

    def guard_pattern(self) -> str:
        """A SCAN pattern matching every guard key of this schema (not its cache keys).

        On a spread schema it matches the keyed guards' tags (``{<tag>:k:...}``) too:
        after the tag comes ``}:`` (one tag) or ``:k`` (spread), never the cache's ``:c``.
        """
        if self.spread:
            return f"{_glob(self.prefix)}:{{{_glob(self._tag)}[}}:][:k]*"
        return f"{_glob(self.prefix)}:{{{_glob(self._tag)}}}:*"

    def pattern(self) -> str:
        """A SCAN pattern matching every key of this schema (guards and cache), and no
        key of a schema with another prefix or tag."""
        # The escaped tag holds no ':' or '}': what follows it tells guard keys ('}')
        # and cache keys (':c:') apart, and no other tag can continue it.
        return f"{_glob(self.prefix)}:{{{_glob(self._tag)}[}}:]*"

    def cache_stream_pattern(self) -> str:
        """A SCAN pattern matching every write-behind stream (:meth:`cache_stream`) of
        every namespace and partition. It can match other keys too (a cached value whose
        key ends the same way): scan with ``TYPE stream`` and check each match against
        :meth:`cache_stream`."""
        return f"{_glob(self.prefix)}:{{{_glob(self._tag)}:c:*}}:wb"
