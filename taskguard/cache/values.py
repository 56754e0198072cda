"""What ``set()`` accepts: a value that reads back equal through the codec, and a key and
value the store can hold.

The codec check encodes the value (which the write needs anyway), decodes it and compares:
a tuple comes back as a list, a dict with int keys comes back with str keys (JSON) or not
at all (msgpack), NaN never equals itself. Such a value is refused with
:class:`~taskguard.errors.UnstorableValue` naming the key and the place in the value, before
anything is written: a cache that hands back something other than what it was given is
a bug waiting in the caller. The store's own limits come from ``Store.check``
(:func:`taskguard.sinks.check_record`). Measured on a 840-byte dict: 11.5 µs (JSON) or
7 µs (msgpack) for the decode and compare, 2 µs more for ``SQLStore.check`` on the JSON
text (docs/caching.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from taskguard.errors import UnstorableValue
from taskguard.sinks.base import JSONText, Record, accepts_json_text, check_record
from taskguard.sinks.values import Problem, find, item_path

from .codec import Codec

__all__ = ["ValueCheck"]

_LEAVES = (str, int, float, bool, type(None))


class ValueCheck:
    """Checks the writes of one namespace.

    Args:
        namespace: The namespace (for errors and for ``Store.check``).
        codec: Its codec.
        store: The store its writes reach (None: cache-aside, which writes no store).
    """

    def __init__(self, namespace: str, codec: Codec, store: object | None) -> None:
        self.namespace = namespace
        self.codec = codec
        self.store = store
        # The JSON codec's payload is the value's compact JSON: a store that takes JSON
        # text checks it without encoding the value a second time.
        self._json_text = codec.name == "json" and accepts_json_text(store)

    def payload(self, key: str, value: Any) -> bytes:
        """The encoded ``value``, once it is known to read back equal and (with a store)
        to be storable under ``key``.

        Raises:
            UnstorableValue: It is not; nothing was written.
        """
        codec = self.codec
        try:
            payload = codec.dumps(value)
        except (TypeError, ValueError, OverflowError) as exc:
            reason = f"the {codec.name} codec cannot encode it: {exc}"
            raise self._refuse(key, value, _UNREAD, reason) from exc
        try:
            back = codec.loads(payload)
        except (TypeError, ValueError) as exc:
            reason = f"the {codec.name} codec cannot read it back: {exc}"
            raise self._refuse(key, value, _UNREAD, reason) from exc
        if back != value:
            raise self._refuse(key, value, back, "it would not read back equal")
        if self.store is not None:
            checked = JSONText(payload.decode("utf-8")) if self._json_text else value
            check_record(self.store, self.namespace, Record(key, checked, 0))
        return payload

    def deletion(self, key: str) -> None:
        """Refuse a delete of a key the store cannot hold (its tombstone would fail)."""
        if self.store is not None:
            check_record(self.store, self.namespace, Record(key, None, 0, deleted=True))

    def _refuse(self, key: str, value: Any, back: Any, fallback: str) -> UnstorableValue:
        where, reason = _difference(value, back, self.codec.name) or ("value", fallback)
        return UnstorableValue(reason, namespace=self.namespace, key=key, field=where)


_ABSENT = object()  # a dict key missing from what was read back
_UNREAD = object()  # the codec could not encode or decode the value at all


def _difference(value: Any, back: Any, codec: str, path: str = "value") -> Problem | None:
    """Where ``value`` and what it reads back as (``back``, or ``_UNREAD``) first differ,
    and how. Only runs on the error path."""
    if back is _UNREAD:
        return find(value, _suspect(codec), judge_key=_bad_key, path=path)
    reason = _suspect(codec)(value)
    if reason is not None:
        return path, reason
    if isinstance(value, dict) and isinstance(back, dict):
        for key, item in value.items():
            reason = _bad_key(key)
            if reason is not None:
                return path, f"the dict key {key!r}: {reason}"
            found = _difference(item, back.get(key, _ABSENT), codec, item_path(path, key))
            if found is not None:
                return found
        return None
    if isinstance(value, list) and isinstance(back, list) and len(value) == len(back):
        for index, (item, again) in enumerate(zip(value, back, strict=True)):
            found = _difference(item, again, codec, item_path(path, index))
            if found is not None:
                return found
        return None
    if value != back:
        shown = "nothing" if back is _ABSENT else repr(back)
        return path, f"{_short(value)} reads back as {_short(shown)}"
    return None


def _suspect(codec: str) -> Callable[[Any], str | None]:
    leaves = (*_LEAVES, bytes) if codec == "msgpack" else _LEAVES

    def judge(node: Any) -> str | None:
        if isinstance(node, float) and math.isnan(node):
            return "NaN never equals itself, so it cannot read back equal"
        if isinstance(node, tuple):
            return "a tuple reads back as a list: pass a list"
        if not isinstance(node, (*leaves, list, dict)):
            return f"the {codec} codec cannot encode a {type(node).__name__}"
        return None

    return judge


def _bad_key(key: Any) -> str | None:
    if isinstance(key, str):
        return None
    return f"a {type(key).__name__}, but keys read back as strings (or not at all): use str"


def _short(text: Any) -> str:
    shown = text if isinstance(text, str) else repr(text)
    return shown if len(shown) <= 60 else shown[:57] + "..."
