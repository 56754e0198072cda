"""How integrations name guards: low-cardinality labels, never a bucket key.

A task's guards are the same on every run, so what integrations derive from them (the
labels, the kinds, whether one waits) is worked out once per set of guards
(:func:`described`) rather than once per run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

__all__ = ["Described", "described", "guard_label", "guard_labels"]

#: Sets of guards described before are kept up to this many (then all are forgotten).
_KEEP = 4096


def guard_label(guard: Any) -> str:
    """``"<kind>:<name>"`` of a guard spec (a guard bound to a task is named after it
    unless it was given a name, as breakers and shared limits are)."""
    kind = getattr(guard, "kind", type(guard).__name__)
    name = getattr(guard, "name", None)
    return f"{kind}:{name}" if name else str(kind)


def guard_labels(guards: Iterable[Any]) -> list[str]:
    """:func:`guard_label` of each guard, in order."""
    return [guard_label(guard) for guard in guards]


class Described(NamedTuple):
    """What integrations report about a set of guards (treat the lists as read-only)."""

    #: The guards themselves (kept, so their ids stay theirs while described).
    guards: tuple[Any, ...]
    #: :func:`guard_label` of each guard, in order.
    labels: list[str]
    #: The guards' kinds, sorted, each once.
    kinds: list[str]
    #: The labels joined by commas (a Sentry tag).
    tag: str
    #: True if a guard waits in the worker (``wait`` > 0).
    waits: bool


_described: dict[tuple[int, ...], Described] = {}


def described(guards: Sequence[Any]) -> Described:
    """The labels, kinds and wait of ``guards``, worked out on the first call for these
    guard objects and looked up after that.

    Example:
        >>> from taskguard import RateLimit
        >>> described([RateLimit("10/s", name="api")]).labels
        ['rate_limit:api']
    """
    key = tuple(map(id, guards))
    found = _described.get(key)
    if found is not None:
        return found
    labels = guard_labels(guards)
    found = Described(
        guards=tuple(guards),
        labels=labels,
        kinds=sorted({getattr(guard, "kind", "?") for guard in guards}),
        tag=",".join(labels),
        waits=any(getattr(guard, "wait", 0) for guard in guards),
    )
    if len(_described) >= _KEEP:
        _described.clear()
    _described[key] = found
    return found
