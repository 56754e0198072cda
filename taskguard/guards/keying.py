"""Guard keys: a template over a task's arguments, or a callable.

A key is a ``str``, or an ``int`` taken as its decimal text (``7`` and ``"7"`` are one
bucket, as a template renders ``{customer_id}`` for ``customer_id=7``). Anything else
given or returned at call time (a float, a tuple, ``None`` from a callable) is a
``TypeError`` naming the field: ``str()`` of an arbitrary object makes silently wrong keys
(``"(1, 2)"``, or an address that differs per object).
"""

from __future__ import annotations

import inspect
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from taskguard.errors import ConfigurationError

__all__ = ["KeyFunc", "bucket_tag", "key_text", "tag_func"]

KeySource = str | Callable[..., Any] | None


def key_text(value: object, field: str = "key") -> str:
    """A key given at call time as text: a ``str`` as it is, an ``int`` in decimal.

    Raises:
        TypeError: Naming ``field``, for any other type (``bool`` included).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"{field} must be a str or an int, got {type(value).__name__} {value!r}")


def bucket_tag(guard: Any, spread: bool, bucket: str | None, tag: object) -> str | None:
    """The hash-tag source of a bucket named by its key outside a task run: a standalone
    call, or a pause of another bucket than the run's.

    ``tag`` is what the guard's ``tag=`` template gives for that bucket. On a spread key
    schema (Redis Cluster) a guard placed by tag needs it: the key alone names a key in
    another slot, which no task uses, so the call would pass or pause silently apart.

    Raises:
        ValueError: The guard places its buckets by tag, the schema spreads, and no
            ``tag`` was given for a keyed bucket.
        TypeError: ``tag`` is not a str, an int or None.
    """
    if tag is not None:
        return key_text(tag, "tag")
    source = getattr(getattr(guard, "tag", None), "source", None)
    if source is not None and bucket is not None and spread:
        raise ValueError(
            f"{guard!r} places its buckets by tag on a Redis Cluster: give bucket "
            f"{bucket!r}'s tag too (tag=..., what {source!r} renders for it)"
        )
    return None


def _template_fields(template: str) -> list[str]:
    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigurationError(
            f"key template {template!r} is not a valid template ({exc}); "
            "write '{{' and '}}' for literal braces",
            field="key",
        ) from None
    for _, field, _, conversion in parsed:
        if field is None:
            continue
        if conversion not in (None, "r", "s", "a"):
            raise ConfigurationError(
                f"key template {template!r} has an unknown conversion '!{conversion}'",
                field="key",
            )
        root = field.split(".", 1)[0].split("[", 1)[0]
        if not root or root.isdigit():
            raise ConfigurationError(
                f"key template {template!r} must name arguments, e.g. '{{customer_id}}'",
                field="key",
            )
        names.append(root)
    return names


class KeyFunc:
    """Turns a call's arguments into a guard key.

    Args:
        source: ``None`` (one key for every call), a ``str.format`` template naming the
            task's arguments (``"{customer_id}"``, ``"{order.tenant}"``), or a callable
            taking the task's ``*args, **kwargs`` and returning the key.
    """

    __slots__ = ("fields", "source")

    def __init__(self, source: KeySource) -> None:
        if source is not None and not isinstance(source, str) and not callable(source):
            raise ConfigurationError(
                f"key must be a template string or a callable, got {type(source).__name__}",
                field="key",
            )
        self.source = source
        self.fields = _template_fields(source) if isinstance(source, str) else []

    def validate(self, signature: inspect.Signature | None) -> None:
        """Check that every name in the template is a parameter of ``signature``."""
        if signature is None or not self.fields:
            return
        params = signature.parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        for name in self.fields:
            if name not in params:
                known = ", ".join(params) or "none"
                raise ConfigurationError(
                    f"key template {self.source!r} names argument {name!r}, "
                    f"which the task does not take (its arguments: {known})",
                    field="key",
                )

    def render(
        self,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        signature: inspect.Signature | None = None,
    ) -> str | None:
        """The key for one call, or ``None`` for the guard's single shared key."""
        source = self.source
        if source is None:
            return None
        if callable(source):
            return key_text(source(*args, **kwargs), "key (the key callable's result)")
        if not self.fields:
            return source
        if signature is None:
            return source.format_map(kwargs)
        bound = signature.bind_partial(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        for param in signature.parameters.values():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                values.update(values.pop(param.name, {}))
        return source.format_map(values)


def tag_func(tag: KeySource, key: KeyFunc) -> KeyFunc:
    """A guard's ``tag`` option: where its keyed state lives on a Redis Cluster.

    A template or callable like ``key``; its value replaces the bucket key as the source
    of the hash tag (see docs/design.md, "Key schema"), so guards keyed differently can
    share a slot. It must be a function of the key (the same key, the same tag), and is
    only read on a Cluster.

    Raises:
        ConfigurationError: ``tag`` without a ``key`` (an unkeyed guard's state is one
            key, under the prefix's own tag), or not a template or callable.
    """
    if tag is not None and key.source is None:
        raise ConfigurationError(
            "tag places a keyed guard's state on a Redis Cluster; this guard has no key",
            field="tag",
        )
    try:
        return KeyFunc(tag)
    except ConfigurationError as exc:
        raise ConfigurationError(exc.reason.replace("key", "tag", 1), field="tag") from None
