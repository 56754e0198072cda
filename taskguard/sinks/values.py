"""Finding the part of a value a codec or a database cannot keep, for error messages.

Checks run on whole values first (an encode, a comparison: C speed); only when one fails
does :func:`find` walk the value to name the place, as a path such as
``value['items'][2]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Problem", "find", "item_path"]

#: A problem found at a path: ``(path, what is wrong there)``.
Problem = tuple[str, str]


def item_path(path: str, index: object) -> str:
    """``path[index]`` as Python would write it (``value['a'][0]``)."""
    return f"{path}[{index!r}]"


def find(
    value: Any,
    judge: Callable[[Any], str | None],
    *,
    judge_key: Callable[[Any], str | None] | None = None,
    path: str = "value",
) -> Problem | None:
    """The first problem in ``value``, depth first.

    Args:
        value: What to walk: dicts, lists and tuples are walked into.
        judge: Names what is wrong with a node (a container or a leaf), or returns None.
        judge_key: The same for a dict key (default: ``judge``); a key's problem is
            reported at its dict's path.
        path: The path of ``value`` itself.
    """
    reason = judge(value)
    if reason is not None:
        return path, reason
    if isinstance(value, dict):
        for key, item in value.items():
            reason = (judge_key or judge)(key)
            if reason is not None:
                return path, f"the dict key {key!r}: {reason}"
            found = find(item, judge, judge_key=judge_key, path=item_path(path, key))
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = find(item, judge, judge_key=judge_key, path=item_path(path, index))
            if found is not None:
                return found
    return None
