"""What a :class:`~taskguard.sinks.sql.SQLStore` can never hold, checked before a write.

The cache asks (``Store.check``) in ``set()`` and ``delete()``, so a record the database
would refuse is refused to its caller instead of being queued and dead-lettered later:

* **strict JSON** (the generic table): no NaN or Infinity (``jsonb`` and our SQLite
  check both refuse them), only JSON types;
* **PostgreSQL text** has no NUL character, in keys, in values, or in a value's strings
  and dict keys (``jsonb`` refuses the ``\\u0000`` escape);
* **PostgreSQL's B-tree index** holds entries of at most 2704 bytes: the namespace and
  the key together, plus headers. Keys are bounded at :data:`POSTGRES_MAX_KEY_BYTES`
  bytes of UTF-8, which leaves room for a namespace of 64 characters (the cache's bound);
* **a mapped table** needs a dict value.

SQLite holds NUL characters and keys of any length (up to its 1 GB string limit).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from taskguard.errors import UnstorableValue

from .base import JSONText, Record
from .values import find

__all__ = ["POSTGRES_MAX_KEY_BYTES", "check_sql_record", "max_key_bytes"]

#: The longest key a PostgreSQL store takes, in bytes of UTF-8.
POSTGRES_MAX_KEY_BYTES = 2048

_NUL = "\x00"
_JSON_TYPES = (str, int, float, bool, type(None), list, tuple, dict)


def max_key_bytes(dialect: str) -> int | None:
    """The longest key the dialect's table takes, in bytes of UTF-8 (None: unbounded)."""
    return POSTGRES_MAX_KEY_BYTES if dialect == "postgresql" else None


def check_sql_record(record: Record, namespace: str, *, dialect: str, mapped: bool) -> None:
    """Raise :class:`UnstorableValue` if the table can never hold ``record``.

    Args:
        record: The record (its version is not looked at). Its value may be a
            :class:`~taskguard.sinks.base.JSONText` (for the generic table): then the
            text is searched, and decoded only when it may hold a problem.
        namespace: The cache namespace, for the error.
        dialect: ``"postgresql"`` or ``"sqlite"``.
        mapped: True for a user's table (:class:`~taskguard.sinks.sql.TableMapping`).
    """
    key = record.key
    postgres = dialect == "postgresql"

    def refuse(reason: str, field: str = "key") -> UnstorableValue:
        return UnstorableValue(reason, namespace=namespace, key=str(key), field=field)

    if not isinstance(key, str):
        raise refuse(f"must be a string, not {type(key).__name__}")
    if postgres:
        if _NUL in key:
            raise refuse("PostgreSQL text cannot hold a NUL character")
        limit = POSTGRES_MAX_KEY_BYTES
        size = len(key.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise refuse(f"{size} bytes of UTF-8; PostgreSQL's index takes keys of {limit} at most")
    if record.deleted:
        return
    value = record.value
    if type(value) is JSONText:
        # The value's JSON already (the cache's JSON codec made it): a NaN, an Infinity or
        # a NUL can only be there if these appear in the text, most often they do not.
        if not ("NaN" in value or "Infinity" in value or (postgres and "\\u0000" in value)):
            return
        value = json.loads(value)  # look closer: decoded, it goes through the checks below
    if mapped:
        if not isinstance(value, Mapping):
            raise refuse(f"a mapped table needs a dict value, not {type(value).__name__}", "value")
        if postgres:
            _check_nul(value, refuse)
        return
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        where, reason = find(value, _not_strict_json) or ("value", str(exc))
        raise refuse(f"{reason}: the store keeps strict JSON", where) from exc
    # json.dumps escapes NUL as \u0000; the walk tells a real NUL from the six-character
    # text "\u0000" (and runs only when that text is there at all).
    if postgres and "\\u0000" in text:
        _check_nul(value, refuse)


def _check_nul(value: Any, refuse: Any) -> None:
    found = find(value, _has_nul)
    if found is not None:
        where, reason = found
        raise refuse(reason, where)


def _has_nul(node: Any) -> str | None:
    if isinstance(node, str) and _NUL in node:
        return "PostgreSQL text cannot hold a NUL character"
    return None


def _not_strict_json(node: Any) -> str | None:
    if isinstance(node, float) and not math.isfinite(node):
        return f"{node!r} is not JSON"
    if not isinstance(node, _JSON_TYPES):
        return f"a {type(node).__name__} is not JSON"
    return None
