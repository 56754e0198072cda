"""Parked tasks: messages refused by a slot or a lock, kept in Redis until it has room.

The Redis side of work-conserving deferral (see docs/design.md, "Parking"): payloads are
opaque bytes here (the Celery layer packs and publishes them). Every call is one script
(``scripts/park*.lua`` with ``scripts/lib/park.lua``), so a lot, its guard and its
hand-backs change together. Only the Redis backend parks; the memory backend defers by
time.

On a spread key schema (Redis Cluster) a keyed guard's lot, and the lots' index with it
(messages, meta, due, out), live under that guard's own hash tag, so each script still
touches one slot. The tags with parked work are listed under the prefix's tag
(:meth:`KeySchema.park_heads`, by their due key), which the sweep walks: a tag is due
again at its earliest lot or hand-back deadline, at most :data:`HEAD_RECHECK_MS` later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from .redis import RedisBackend

OpT = TypeVar("OpT")

__all__ = ["HANDOFF_OWNER_SUFFIX", "Parking"]

#: A handed-back ticket's room is held under ``<ticket>`` + this until its message admits.
HANDOFF_OWNER_SUFFIX = ":parked"
#: Spread schema: the longest a tag with parked work goes unswept (ms).
HEAD_RECHECK_MS = 1000
#: How long a listing of tags with parked work lives after its last change (ms).
_HEADS_TTL_MS = 86_400_000


@dataclass(frozen=True)
class Parking:
    """The parked tasks of one key prefix.

    Args:
        backend: Where they are kept.
        handoff: Seconds a handed-back task's room is held for it before a newcomer (or
            the next parked task) may take it.
        out_ttl: Seconds a hand-back may take to arrive before a sweep publishes it again
            (the first copy to arrive runs; see :meth:`claim`).
    """

    backend: RedisBackend
    handoff: float = 30.0
    out_ttl: float = 30.0

    def _shared(self, of: str | None = None) -> list[str]:
        """The lots' index under ``of``'s tag (any key there; None: the prefix's)."""
        keys = self.backend.keys
        return [keys.park_messages(of), keys.park_meta(of), keys.park_due(of), keys.park_out(of)]

    def localized(self, op: OpT) -> OpT:
        """``op`` with its limits set at run time applied, when a parking script cannot
        read them: a spread schema's keyed cap keeps its hash of run-time counts in the
        prefix's slot, apart from its lot (read by the client, as its admission does)."""
        if not self.backend.keys.spread:
            return op
        return self.backend._limits.localize([op])[0]

    def _ms(self) -> list[int]:
        return [int(self.handoff * 1000), int(self.out_ttl * 1000)]

    def park(
        self,
        guard_key: str,
        *,
        mode: str,
        limit: int,
        ticket: str,
        seq: int,
        payload: bytes,
        group: tuple[str, float] | None = None,
        overrides: tuple[str, str] | None = None,
    ) -> list[bytes]:
        """Park ``payload`` on ``guard_key``'s lot at FIFO position ``seq``.

        Args:
            guard_key: The refusing guard's key (a slot set or a lock key).
            mode: ``"slot"`` or ``"lease"``: how the lot finds room on its guard.
            limit: The slot count (1 for a lock).
            ticket: The task id.
            seq: Position in the lot (lower first): the first denial's time, so a
                task parked again keeps its place.
            payload: The message to publish when it is handed back.
            group: A fair share's ``(group, weight)``: the lot orders this task by
                weighted fair queuing between groups instead of by ``seq``
                (:mod:`taskguard.guards.fairness`).
            overrides: A cap's slot counts set at run time and this key's field in
                them (:attr:`~taskguard.backend.ops.SlotOp.overrides`): the lot counts
                its free slots with them, as the admission does.

        Returns:
            Payloads to publish now: the guard gained room since it refused, so the lot's
            heads (this task among them, if first) were handed back at once.
        """
        keys = self.backend.keys
        lot = keys.park_lot(guard_key)
        key_list = [lot, *self._shared(guard_key), guard_key]
        args: list[object] = [ticket, seq, payload, mode, limit, *self._ms()]
        if group is not None:
            key_list.append(keys.park_fair(guard_key))
            args += [group[0], repr(float(group[1]))]
        if overrides is not None:
            if group is None:
                args += ["", ""]
            key_list.append(overrides[0])
            args.append(overrides[1])
        payloads = self._payloads("park", key_list, args, "parking")
        if not keys.shared(guard_key):  # after the lot has it: see sweep()
            with self.backend.commands("parked tags") as client:
                client.zadd(keys.park_heads(), {keys.park_due(guard_key): 0})
                client.pexpire(keys.park_heads(), _HEADS_TTL_MS)
        return payloads

    def hand_back(self, guard_key: str) -> list[bytes]:
        """After a release of ``guard_key``: the parked payloads it now has room for."""
        lot = self.backend.keys.park_lot(guard_key)
        keys = [lot, *self._shared(guard_key)]
        return self._payloads("park_take", keys, self._ms(), "hand-back")

    def sweep(self, batch: int = 64) -> list[bytes]:
        """Payloads no release handed back: lots whose guard has room (a holder's lease
        expired), and hand-backs that never arrived (published again)."""
        args = [*self._ms(), batch]
        payloads = self._payloads("park_sweep", self._shared(), args, "park sweep")
        if self.backend.keys.spread:
            for due in self._due_heads(batch):
                payloads += self._payloads("park_sweep", self._shared(due), args, "park sweep")
                self._reschedule(due)
        return payloads

    def _due_heads(self, batch: int) -> list[str]:
        """Spread schema: the due keys of tags whose time to be swept came."""
        reply = self.backend.run_script(
            "park_heads", [self.backend.keys.park_heads()], [batch, HEAD_RECHECK_MS, _HEADS_TTL_MS],
            what="park sweep",
        )  # fmt: skip
        return [h.decode() if isinstance(h, bytes) else str(h) for h in reply or ()]

    def _reschedule(self, due: str) -> None:
        """When to sweep tag ``due`` again; forget it once nothing is parked there. The
        tag is removed before a last look, and listed again if a park came meanwhile (a
        park lists its tag after its lot has the task)."""
        heads = self.backend.keys.park_heads()
        shared = self._shared(due)
        index = [shared[2], shared[3], shared[1]]
        what = "park sweep"
        after = int(self.backend.run_script("park_next", index, [], what=what))
        with self.backend.commands(what) as client:
            if after >= 0:
                client.zadd(heads, {due: after}, lt=True)
                return
            client.zrem(heads, due)
        if int(self.backend.run_script("park_next", index, [], what=what)) >= 0:
            with self.backend.commands(what) as client:
                client.zadd(heads, {due: 0})

    def _heads(self) -> list[str | None]:
        """Every tag's due key with parked work (None: the prefix's own tag)."""
        found: list[str | None] = [None]
        if self.backend.keys.spread:
            with self.backend.commands("parked count") as client:
                listed = client.zrange(self.backend.keys.park_heads(), 0, -1)
            found += [h.decode() if isinstance(h, bytes) else str(h) for h in listed]
        return found

    def claim(self, ticket: str, guard_key: str | None = None) -> bool:
        """A handed-back message arrived: True if it is the one to run (exactly once).
        ``guard_key``: the guard it was parked on (its tag holds the ticket)."""
        keys = self.backend.keys
        index = [keys.park_out(guard_key), keys.park_messages(guard_key)]
        reply = self.backend.run_script("park_claim", index, [ticket], what="hand-back claim")
        return bool(reply)

    def drop(self, ticket: str, guard_key: str) -> tuple[bool, list[bytes]]:
        """A handed-back message was discarded unrun (revoked, expired): forget its
        ticket and free the room held for it. Returns whether the ticket was still out,
        and the payloads of the next parked tasks the room now goes to."""
        keys = self.backend.keys
        removed, *payloads = self.backend.run_script(
            "park_drop",
            [keys.park_lot(guard_key), *self._shared(guard_key), guard_key],
            [ticket, *self._ms()],
            what="hand-back drop",
            libs=("park",),
        )
        return bool(removed), [p if isinstance(p, bytes) else str(p).encode() for p in payloads]

    def counts(self) -> dict[str, int]:
        """Parked tasks per guard key (tasks handed back but not yet arrived excluded)."""
        keys = self.backend.keys
        with self.backend.commands("parked count") as client:
            lots = [
                lot.decode() if isinstance(lot, bytes) else lot
                for head in self._heads()
                for lot in client.hkeys(keys.park_meta(head))
            ]
            pipe = client.pipeline(transaction=False)
            for lot in lots:
                pipe.zcard(lot)
            sizes = pipe.execute()
        return {keys.park_guard_key(lot): int(n) for lot, n in zip(lots, sizes, strict=True) if n}

    def in_flight(self) -> int:
        """Tasks handed back whose message has not arrived (and claimed) yet."""
        keys = self.backend.keys
        with self.backend.commands("parked count") as client:
            return sum(int(client.zcard(keys.park_out(head))) for head in self._heads())

    def _payloads(
        self, script: str, keys: Sequence[str], args: Sequence[object], what: str
    ) -> list[bytes]:
        reply = self.backend.run_script(script, keys, list(args), what=what, libs=("park",))
        return [p if isinstance(p, bytes) else str(p).encode() for p in reply or ()]
