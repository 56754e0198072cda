"""How integrations name guards: low-cardinality labels, never a bucket key."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["guard_label", "guard_labels"]


def guard_label(guard: Any) -> str:
    """``"<kind>:<name>"`` of a guard spec (a guard bound to a task is named after it
    unless it was given a name, as breakers and shared limits are)."""
    kind = getattr(guard, "kind", type(guard).__name__)
    name = getattr(guard, "name", None)
    return f"{kind}:{name}" if name else str(kind)


def guard_labels(guards: Iterable[Any]) -> list[str]:
    """:func:`guard_label` of each guard, in order."""
    return [guard_label(guard) for guard in guards]
