"""The guard events' types and fields, and their JSON form on the channel.

Every event is one JSON object: the common fields ``type``, ``at`` (epoch seconds on the
publishing host's clock), ``prefix``, ``host`` and ``pid``, then its type's fields, each
always present (``null`` when not known). docs/observability.md documents each type.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["COMMON_FIELDS", "EVENT_TYPES", "Event", "EventType"]

#: The fields every event has, in the order they are written.
COMMON_FIELDS = ("type", "at", "prefix", "host", "pid")


@dataclass(frozen=True)
class EventType:
    """One kind of event: the fields it must have, and those it may leave ``null``."""

    name: str
    summary: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()

    @property
    def fields(self) -> tuple[str, ...]:
        """Every field of this type, in the order they are written."""
        return self.required + self.optional

    def check(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` in field order, the optional ones filled with None.

        Raises:
            ValueError: A required field is missing, or a field is not of this type.
        """
        unknown = sorted(set(values) - set(self.fields))
        if unknown:
            raise ValueError(
                f"event {self.name!r} has no field {unknown[0]!r}; its fields: "
                f"{', '.join(self.fields)}"
            )
        missing = [name for name in self.required if name not in values]
        if missing:
            raise ValueError(f"event {self.name!r} needs the field {missing[0]!r}")
        return {name: values.get(name) for name in self.fields}


def _types(*types: EventType) -> dict[str, EventType]:
    return {t.name: t for t in types}


#: Every event type, by name. A type's fields are documented in docs/observability.md.
EVENT_TYPES: Mapping[str, EventType] = _types(
    EventType(
        "circuit_state_changed",
        "a circuit breaker changed state (sent by the process that made the transition)",
        ("name", "old", "new", "reason"),
        ("task_id",),
    ),
    EventType(
        "lease_lost",
        "a task's lease (lock, slot, claim) was found expired or taken over",
        ("key",),
        ("kind", "name", "task", "task_id"),
    ),
    EventType(
        "dead_lettered",
        "write-behind records were moved to the dead-letter stream",
        ("namespace", "keys", "error", "attempts"),
    ),
    EventType(
        "deferral_exhausted",
        "a task hit its deferral cap: failed, dropped or dead-lettered (policy)",
        ("task", "task_id", "deferrals", "age", "policy"),
        ("dead_letter_queue",),
    ),
    EventType(
        "limit_changed",
        "a rate limit, concurrency cap or quota was set or cleared at run time",
        ("name", "action"),
        ("key", "rate", "burst", "user", "kind", "limit"),
    ),
    EventType(
        "admin",
        "an operator acted on guard state (lock release --force, breaker open|close|reset)",
        ("action", "name"),
        ("key", "owner", "fencing_token", "before", "after", "user"),
    ),
)


@dataclass(frozen=True)
class Event:
    """One guard event, as published and as received.

    Attributes:
        type: One of :data:`EVENT_TYPES` (a newer publisher may send types this version
            does not know; they are received as they are).
        at: When it happened, in epoch seconds, on the publishing host's clock.
        prefix: The key prefix it belongs to (the channel's).
        host: The publishing host's name.
        pid: The publishing process's id.
        fields: The type's own fields (see docs/observability.md).

    Example:
        >>> event = Event("admin", 1.5, "tg", "ops-1", 42, {"action": "breaker_open"})
        >>> event["action"], event["host"]
        ('breaker_open', 'ops-1')
        >>> Event.from_json(event.to_json()) == event
        True
    """

    type: str
    at: float
    prefix: str
    host: str
    pid: int
    fields: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        """A common field or one of the type's own fields (``KeyError`` if neither)."""
        if name in COMMON_FIELDS:
            return getattr(self, name)
        return self.fields[name]

    def get(self, name: str, default: Any = None) -> Any:
        """Like :meth:`__getitem__`, with a default."""
        try:
            return self[name]
        except KeyError:
            return default

    def to_dict(self) -> dict[str, Any]:
        """The event as one flat mapping: the common fields, then the type's."""
        common = {"type": self.type, "at": self.at, "prefix": self.prefix}
        return {**common, "host": self.host, "pid": self.pid, **self.fields}

    def to_json(self) -> str:
        """The message published on the channel."""
        return json.dumps(self.to_dict(), separators=(",", ":"), default=str)

    @classmethod
    def from_json(cls, message: str | bytes) -> Event:
        """Parse a message of the channel.

        Raises:
            ValueError: Not an event (not JSON, not an object, a common field missing or
                of the wrong type).
        """
        try:
            raw = json.loads(message)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"not a JSON object: {type(raw).__name__}")
        kind, at, prefix, host, pid = (raw.pop(name, None) for name in COMMON_FIELDS)
        if not (isinstance(kind, str) and isinstance(prefix, str) and isinstance(host, str)):
            raise ValueError("type, prefix and host must be strings")
        if isinstance(at, bool) or not isinstance(at, (int, float)):
            raise ValueError(f"at must be a number, got {at!r}")
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise ValueError(f"pid must be an integer, got {pid!r}")
        return cls(kind, float(at), prefix, host, pid, raw)
