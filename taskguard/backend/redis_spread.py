"""Admission, release and renewal across Redis Cluster slots (a spread key schema).

A mixin of :class:`~taskguard.backend.redis.RedisBackend`, apart so that module stays
readable. It runs the plan of :mod:`taskguard.backend.spread`: one script call per slot,
in a fixed order, with what earlier slots took given back when a later one refuses or
fails. The backend calls it only when its key schema spreads and the ops span several
slots; anything else is one call, as on one server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, TypeVar

import redis

from taskguard.errors import TaskGuardError

from .ops import Admission, Held, Op
from .spread import by_slot, granted_across, refused_across, undo_ops
from .spread_limits import text_hash

__all__ = ["SpreadCalls"]

logger = logging.getLogger("taskguard.backend")
R = TypeVar("R")


class SpreadCalls:
    """Admission in slot order with undo, release and renewal per slot (a mixin)."""

    if TYPE_CHECKING:

        def commands(self, what: str) -> AbstractContextManager[redis.Redis]: ...

        def _admit_slot(self, ops: Sequence[Op], reserve_within: float) -> Admission: ...

        def _release_slot(self, ops: Sequence[Held], guarded: bool = True) -> list[int]: ...

        def _renew_slot(self, ops: Sequence[Held]) -> list[bool]: ...

    def _admit_spread(
        self, ops: Sequence[Op], groups: list[list[int]], reserve_within: float
    ) -> Admission:
        """Admit ``ops`` (in several slots: ``groups``) all or nothing, a call per slot."""
        taken: list[list[int]] = []
        admissions: list[Admission] = []
        for group in groups:
            try:
                # Several slots never reserve: a reservation in one slot while another
                # refuses would be paid for nothing (docs/design.md, "Key schema").
                admission = self._admit_slot([ops[i] for i in group], 0.0)
            except TaskGuardError:
                self._undo(ops, taken)
                raise
            if not admission.allowed:
                self._undo(ops, taken)
                return refused_across(group, admission)
            taken.append(group)
            admissions.append(admission)
        return granted_across(ops, groups, admissions)

    def _undo(self, ops: Sequence[Op], taken: Sequence[Sequence[int]]) -> None:
        # Best effort: an undo that fails leaves leases and slots to expire by their TTL
        # and refunds nothing; the refusal (or the outage) is what the caller learns. It
        # goes past the outage breaker, which a failed later slot may have opened: the
        # earlier slots' masters may well be up.
        for group in taken:
            undone = undo_ops(ops, group)
            if not undone:
                continue
            try:
                self._release_slot(undone, guarded=False)
            except TaskGuardError as exc:
                logger.warning("could not give back an admission's earlier slot: %s", exc)

    def _read_hash(self, name: str) -> dict[str, str]:
        """A hash of limits set at run time (for :class:`.spread_limits.RemoteLimits`)."""
        with self.commands("run-time limits") as client:
            return text_hash(client.hgetall(name))

    def _release_spread(self, ops: Sequence[Held]) -> list[int]:
        return _per_slot(ops, self._release_slot, 0)

    def _renew_spread(self, ops: Sequence[Held]) -> list[bool]:
        return _per_slot(ops, self._renew_slot, False)


def _per_slot(ops: Sequence[Held], call: Callable[[Sequence[Held]], list[R]], empty: R) -> list[R]:
    """``call`` once per slot of ``ops``, the results put back in ``ops``' order. A slot
    whose call fails raises after the others ran (each renewal or release counts)."""
    results = [empty] * len(ops)
    failed: TaskGuardError | None = None
    for group in by_slot(ops):
        try:
            replies = call([ops[i] for i in group])
        except TaskGuardError as exc:
            failed = failed or exc
            continue
        for index, reply in zip(group, replies, strict=True):
            results[index] = reply
    if failed is not None:
        raise failed
    return results
