"""Fair shares of a concurrency cap between keys (tenants, customers).

Tasks refused a slot park in one lot per cap. Plain, the lot is first in, first out, so a
tenant that queued a thousand tasks ahead of a small one makes it wait behind all of
them. With a fair share, each parked task is placed by weighted fair queuing instead: its
position is ``max(V, the last position of its group) + 1 / weight``, where ``V`` is the
position of the task handed back last. Every group with work parked then gets slots in
proportion to its weight, and a task of an idle group is next but one (see
docs/concurrency.md, "Fair shares").
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from taskguard._validate import number
from taskguard.errors import ConfigurationError

from .keying import KeyFunc, KeySource

__all__ = ["FairShare"]


class FairShare:
    """Which group a task belongs to, and that group's weight.

    Args:
        key: Template over the task's arguments (``"{tenant}"``) or a callable: the group.
        weights: Weight per group value (default 1 each); a group of weight 3 gets three
            slots for every one of a group of weight 1 while both have work parked.
    """

    __slots__ = ("key", "weights")

    def __init__(self, key: KeySource, weights: Mapping[str, float] | None = None) -> None:
        if key is None:
            raise ConfigurationError("a fair share needs a key template or callable", field="fair")
        self.key = KeyFunc(key)
        if weights is not None and not isinstance(weights, Mapping):
            raise ConfigurationError(
                f"must be a mapping of group to weight, got {type(weights).__name__}",
                field="weights",
            )
        self.weights = {
            str(group): number(weight, f"weights.{group}", 0.001, 1_000_000)
            for group, weight in (weights or {}).items()
        }

    def group(
        self, args: Sequence[Any], kwargs: Mapping[str, Any], signature: inspect.Signature | None
    ) -> tuple[str, float]:
        """The group of one call and its weight."""
        group = self.key.render(args, kwargs, signature) or ""
        return group, self.weights.get(group, 1.0)
