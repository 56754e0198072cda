"""Parked tasks: messages refused by a slot or a lock, kept in Redis until it has room.

The Redis side of work-conserving deferral (see docs/design.md, "Parking"): payloads are
opaque bytes here (the Celery layer packs and publishes them). Every call is one script
(``scripts/park*.lua`` with ``scripts/lib/park.lua``), so a lot, its guard and its
hand-backs change together. Only the Redis backend parks; the memory backend defers by
time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .redis import RedisBackend

__all__ = ["HANDOFF_OWNER_SUFFIX", "Parking"]

#: A handed-back ticket's room is held under ``<ticket>`` + this until its message admits.
HANDOFF_OWNER_SUFFIX = ":parked"


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

    def _shared(self) -> list[str]:
        keys = self.backend.keys
        return [keys.park_messages(), keys.park_meta(), keys.park_due(), keys.park_out()]

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
        key_list = [lot, *self._shared(), guard_key]
        args: list[object] = [ticket, seq, payload, mode, limit, *self._ms()]
        if group is not None:
            key_list.append(keys.park_fair(guard_key))
            args += [group[0], repr(float(group[1]))]
        if overrides is not None:
            if group is None:
                args += ["", ""]
            key_list.append(overrides[0])
            args.append(overrides[1])
        return self._payloads("park", key_list, args, "parking")

    def hand_back(self, guard_key: str) -> list[bytes]:
        """After a release of ``guard_key``: the parked payloads it now has room for."""
        lot = self.backend.keys.park_lot(guard_key)
        return self._payloads("park_take", [lot, *self._shared()], self._ms(), "hand-back")

    def sweep(self, batch: int = 64) -> list[bytes]:
        """Payloads no release handed back: lots whose guard has room (a holder's lease
        expired), and hand-backs that never arrived (published again)."""
        return self._payloads("park_sweep", self._shared(), [*self._ms(), batch], "park sweep")

    def claim(self, ticket: str) -> bool:
        """A handed-back message arrived: True if it is the one to run (exactly once)."""
        keys = self.backend.keys
        reply = self.backend.run_script(
            "park_claim", [keys.park_out(), keys.park_messages()], [ticket], what="hand-back claim"
        )
        return bool(reply)

    def drop(self, ticket: str, guard_key: str) -> tuple[bool, list[bytes]]:
        """A handed-back message was discarded unrun (revoked, expired): forget its
        ticket and free the room held for it. Returns whether the ticket was still out,
        and the payloads of the next parked tasks the room now goes to."""
        keys = self.backend.keys
        removed, *payloads = self.backend.run_script(
            "park_drop",
            [keys.park_lot(guard_key), *self._shared(), guard_key],
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
                for lot in client.hkeys(keys.park_meta())
            ]
            pipe = client.pipeline(transaction=False)
            for lot in lots:
                pipe.zcard(lot)
            sizes = pipe.execute()
        return {keys.park_guard_key(lot): int(n) for lot, n in zip(lots, sizes, strict=True) if n}

    def in_flight(self) -> int:
        """Tasks handed back whose message has not arrived (and claimed) yet."""
        with self.backend.commands("parked count") as client:
            return int(client.zcard(self.backend.keys.park_out()))

    def _payloads(
        self, script: str, keys: Sequence[str], args: Sequence[object], what: str
    ) -> list[bytes]:
        reply = self.backend.run_script(script, keys, list(args), what=what, libs=("park",))
        return [p if isinstance(p, bytes) else str(p).encode() for p in reply or ()]
