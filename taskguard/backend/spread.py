"""Admission across Redis Cluster slots, for a spread key schema (free of I/O).

On a spread schema (:class:`taskguard.keys.KeySchema` with ``spread=True``, set by the
Redis backends on a Cluster) a keyed guard's keys carry the hash tag of its key, so one
task's ops may live in several slots, and one script can only touch one slot. The
backends then admit in steps, planned here:

* the ops are grouped by slot; each group is one call of the usual admission script
  (all-or-nothing within the slot);
* groups are taken in a fixed order, by slot number, with the groups holding an op that
  cannot be undone last (see below), so two tasks wanting the same slots take them in
  the same order;
* when a group refuses (or its call fails), what the groups before it took is given back
  by one release call per slot, with each op's *undo* (:attr:`OpKind.undo`): a rate
  limit's tokens are refunded exactly, a lease or slot is released, a claim the
  admission dropped is restored; a breaker's half-open probe is given back unrecorded;
* a task spanning several slots never reserves a future rate-limit slot
  (``reserve_within`` is 0): a reservation made in one slot while another refuses
  would be paid for nothing.

Releases and renewals are grouped by slot too: one call per slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar, cast

from redis.crc import key_slot

from .ops import Admission, Held, Op
from .registry import kind_of

__all__ = ["by_slot", "granted_across", "in_order", "refused_across", "same_slot", "undo_ops"]

OpT = TypeVar("OpT", bound=Op)
R = TypeVar("R")


def _slot(op: Op) -> int:
    return int(key_slot(op.key.encode("utf-8", "surrogatepass")))


def same_slot(a: str, b: str) -> bool:
    """True when keys ``a`` and ``b`` hash to one Cluster slot (one script may use both)."""
    return bool(
        key_slot(a.encode("utf-8", "surrogatepass")) == key_slot(b.encode("utf-8", "surrogatepass"))
    )


def _undoable(op: Op) -> bool:
    return kind_of(op).undo is not None


def by_slot(ops: Sequence[OpT]) -> list[list[int]]:
    """The indices of ``ops`` grouped by slot, in the order the groups are taken: by slot
    number, groups with an op that cannot be undone last.

    Example:
        >>> from taskguard.backend.ops import SlotOp
        >>> ops = [SlotOp("{a}:x", "o", 1, 1), SlotOp("{b}:y", "o", 1, 1),
        ...        SlotOp("{a}:z", "o", 1, 1)]
        >>> by_slot(ops)
        [[1], [0, 2]]
    """
    groups: dict[int, list[int]] = {}
    for index, op in enumerate(ops):
        groups.setdefault(_slot(op), []).append(index)
    order = sorted(
        groups,
        key=lambda slot: (not all(_undoable(ops[i]) for i in groups[slot]), slot),
    )
    return [groups[slot] for slot in order]


def granted_across(
    ops: Sequence[Op], groups: Sequence[Sequence[int]], admissions: Sequence[Admission]
) -> Admission:
    """One admission of ``ops`` from every group's granted admission."""
    tokens = [0] * len(ops)
    remaining = -1
    for group, admission in zip(groups, admissions, strict=True):
        for index, token in zip(group, admission.tokens, strict=True):
            tokens[index] = token
        if admission.remaining >= 0:
            remaining = (
                admission.remaining if remaining < 0 else min(remaining, admission.remaining)
            )
    return Admission(True, remaining=remaining, tokens=tuple(tokens))


def in_order(groups: Sequence[Sequence[int]], replies: Sequence[Sequence[R]], n: int) -> list[R]:
    """Per-group replies (of a release or renewal) put back in the ops' order."""
    results: list[R] = [None] * n  # type: ignore[list-item] # every index is filled below
    for group, reply in zip(groups, replies, strict=True):
        for index, value in zip(group, reply, strict=True):
            results[index] = value
    return results


def refused_across(group: Sequence[int], admission: Admission) -> Admission:
    """The refusal of a whole admission by ``group``'s, its denied op named by its index
    among all the task's ops."""
    denied = None if admission.denied is None else group[admission.denied]
    return Admission(
        False,
        admission.retry_after,
        denied,
        admission.reserved,
        admission.remaining,
    )


def undo_ops(ops: Sequence[Op], group: Sequence[int]) -> list[Held]:
    """The ops whose release gives back what ``group``'s admission took (an op with
    nothing to give back has none; an op that cannot be undone is left as it is)."""
    undone: list[Held] = []
    for index in group:
        undo = kind_of(ops[index]).undo
        if undo is not None:
            op = undo(ops[index])
            if op is not None:
                undone.append(cast("Held", op))  # released by its kind: no TTL is read
    return undone
