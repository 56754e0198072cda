"""Parked tasks in Redis (backend/parking.py, scripts/park*.lua): FIFO, hand-back on
release with the room held, newcomers behind the lot, sweeps, and exactly-once claims.

Payloads are opaque here (the Celery layer packs messages); the worker side is proven in
tests/integration/test_parking_fleet.py.

Every test runs with an unkeyed cap and a keyed one, on one server and on a Cluster: there
a keyed guard's lot and the lots' index live under the key's own hash tag (a spread key
schema), and the sweep finds them through the list of tags with parked work.
"""

from __future__ import annotations

import dataclasses

import pytest

from taskguard.backend.ops import LeaseOp, SlotOp
from taskguard.backend.parking import HANDOFF_OWNER_SUFFIX, Parking
from taskguard.backend.redis import RedisBackend
from taskguard.guards.concurrency import Concurrency
from taskguard.guards.lock import Lock
from taskguard.testing import wait_until

from .harness import CLUSTER_TOO, REDIS_ONLY, Contract

pytestmark = [REDIS_ONLY, CLUSTER_TOO]
#: The cap's key in the test running now (None: an unkeyed cap); see ``keyed``.
_BUCKET: list[str | None] = [None]


@pytest.fixture(autouse=True, params=[None, "tenant-7"], ids=["unkeyed", "keyed"])
def keyed(request: pytest.FixtureRequest) -> None:
    _BUCKET[0] = request.param


@pytest.fixture
def backend(contract: Contract) -> RedisBackend:
    assert isinstance(contract.backend, RedisBackend)
    return contract.backend


def slot(backend: RedisBackend, owner: str, limit: int = 1, ttl: float = 10.0) -> SlotOp:
    return Concurrency(limit, name="cap", ttl=ttl).slot_op(backend.keys, _BUCKET[0], owner)


def park(parking: Parking, op: SlotOp, ticket: str, seq: int) -> list[bytes]:
    return parking.park(
        op.key, mode="slot", limit=op.limit, ticket=ticket, seq=seq, payload=ticket.encode()
    )


def test_a_release_hands_back_the_first_parked_task_with_its_slot_held(
    backend: RedisBackend,
) -> None:
    parking = Parking(backend)
    holder = slot(backend, "holder")
    assert backend.admit([holder]).allowed
    # Parked out of order: the lot is FIFO by seq (the first denial), not by arrival.
    assert park(parking, holder, "b", 2) == []
    assert park(parking, holder, "a", 1) == []
    assert parking.counts() == {holder.key: 2}

    assert backend.release([holder]) == [2]  # released, and tasks are parked
    assert parking.hand_back(holder.key) == [b"a"]
    assert parking.counts() == {holder.key: 1}
    assert parking.in_flight() == 1

    # The slot is held for "a": a newcomer is refused (and so would be while "b" waits).
    assert not backend.admit([slot(backend, "newcomer")]).allowed
    assert parking.claim("a", holder.key)
    mine = dataclasses.replace(slot(backend, "x"), owner="a" + HANDOFF_OWNER_SUFFIX)
    assert backend.admit([mine]).allowed
    assert parking.in_flight() == 0

    assert backend.release([mine]) == [2]
    assert parking.hand_back(holder.key) == [b"b"]
    assert parking.counts() == {}


def test_a_newcomer_queues_behind_parked_tasks_even_with_a_free_slot(
    backend: RedisBackend,
) -> None:
    parking = Parking(backend)
    first, second = slot(backend, "h1", limit=2), slot(backend, "h2", limit=2)
    assert backend.admit([first]).allowed
    assert backend.admit([second]).allowed
    assert park(parking, first, "a", 1) == []
    # A slot is free (its hand-back not taken yet), yet "a" waits: no one passes it.
    assert backend.release([second]) == [2]
    assert not backend.admit([slot(backend, "newcomer", limit=2)]).allowed
    assert parking.hand_back(first.key) == [b"a"]


def test_parking_when_the_slot_was_freed_meanwhile_hands_back_at_once(
    backend: RedisBackend,
) -> None:
    parking = Parking(backend)
    op = slot(backend, "gone")
    # Refused a moment ago, but the holder released before the park: no one would wake it.
    assert park(parking, op, "a", 1) == [b"a"]
    assert parking.counts() == {}
    assert parking.in_flight() == 1


def test_a_sweep_hands_back_a_lot_whose_holder_died(backend: RedisBackend) -> None:
    parking = Parking(backend)
    holder = slot(backend, "dead", ttl=0.3)  # never released, never renewed
    assert backend.admit([holder]).allowed
    assert park(parking, holder, "a", 1) == []
    assert parking.sweep() == []  # the lease still runs
    swept: list[bytes] = []
    wait_until(lambda: bool(swept.extend(parking.sweep()) or swept), timeout=5)
    assert swept == [b"a"]


def test_a_lost_hand_back_is_published_again_and_runs_once(backend: RedisBackend) -> None:
    parking = Parking(backend, out_ttl=0.2)
    op = slot(backend, "gone")
    assert park(parking, op, "a", 1) == [b"a"]  # ... and its publisher died here
    again: list[bytes] = []
    wait_until(lambda: bool(again.extend(parking.sweep()) or again), timeout=5)
    assert again == [b"a"]
    assert parking.claim("a", op.key)  # the first copy to arrive runs
    assert not parking.claim("a", op.key)  # every other copy is dropped
    assert parking.sweep() == []


def test_a_lock_parks_and_hands_back_like_a_slot(backend: RedisBackend) -> None:
    parking = Parking(backend)
    (held,) = Lock(key="{k}", name="doc").task_ops(backend.keys, [], {"k": "7"}, "t1")
    assert isinstance(held, LeaseOp)
    assert held.park_key is not None
    assert backend.admit([held]).allowed
    assert parking.park(held.key, mode="lease", limit=1, ticket="t2", seq=1, payload=b"t2") == []
    (late,) = Lock(key="{k}", name="doc").task_ops(backend.keys, [], {"k": "7"}, "t3")
    assert not backend.admit([late]).allowed
    assert backend.release([held]) == [2]
    assert parking.hand_back(held.key) == [b"t2"]
    assert backend.owner(held.key) == "t2" + HANDOFF_OWNER_SUFFIX
    assert not backend.admit([late]).allowed


def test_release_without_parked_tasks_reports_plain_success(backend: RedisBackend) -> None:
    op = slot(backend, "solo")
    assert backend.admit([op]).allowed
    assert backend.release([op]) == [1]
    assert Parking(backend).counts() == {}


def test_a_dropped_hand_back_frees_its_slot_for_the_next_parked_task(
    backend: RedisBackend,
) -> None:
    parking = Parking(backend)
    holder = slot(backend, "holder")
    assert backend.admit([holder]).allowed
    assert park(parking, holder, "a", 1) == []
    assert park(parking, holder, "b", 2) == []
    assert backend.release([holder]) == [2]
    assert parking.hand_back(holder.key) == [b"a"]
    # "a" was revoked: its message is discarded unrun, and "b" gets the slot at once.
    assert parking.drop("a", holder.key) == (True, [b"b"])
    assert not parking.claim("a", holder.key)
    assert parking.claim("b", holder.key)
    assert parking.drop("a", holder.key) == (False, [])
    assert parking.counts() == {}


def _fair_park(parking: Parking, op: SlotOp, ticket: str, group: str, weight: float = 1) -> None:
    assert (
        parking.park(
            op.key,
            mode="slot",
            limit=op.limit,
            ticket=ticket,
            seq=0,
            payload=ticket.encode(),
            group=(group, weight),
        )
        == []
    )


def _drain_order(backend: RedisBackend, parking: Parking, op: SlotOp) -> list[str]:
    """Hand the lot back one slot at a time: the order tasks would start in."""
    order = []
    while True:
        (payload,) = parking.hand_back(op.key) or [b""]
        if not payload:
            return order
        order.append(payload.decode())
        held = dataclasses.replace(op, owner=payload.decode() + HANDOFF_OWNER_SUFFIX)
        assert parking.claim(payload.decode(), op.key)
        assert backend.release([held]) in ([1], [2])


def test_a_fair_share_interleaves_a_small_group_with_a_big_backlog(
    backend: RedisBackend,
) -> None:
    parking = Parking(backend)
    holder = slot(backend, "holder")
    assert backend.admit([holder]).allowed
    for i in range(6):
        _fair_park(parking, holder, f"big-{i}", "big")
    _fair_park(parking, holder, "small-0", "small")
    _fair_park(parking, holder, "small-1", "small")
    assert backend.release([holder]) == [2]
    order = _drain_order(backend, parking, holder)
    # Without fair shares the small group would wait behind all six.
    assert order == ["big-0", "small-0", "big-1", "small-1", "big-2", "big-3", "big-4", "big-5"]


def test_weights_split_the_slots_and_a_late_group_waits_one_round_at_most(
    backend: RedisBackend,
) -> None:
    parking = Parking(backend)
    holder = slot(backend, "holder")
    assert backend.admit([holder]).allowed
    for i in range(6):
        _fair_park(parking, holder, f"big-{i}", "big", weight=2)
    for i in range(3):
        _fair_park(parking, holder, f"mid-{i}", "mid")
    assert backend.release([holder]) == [2]
    first = parking.hand_back(holder.key)
    assert first == [b"big-0"]
    # A group that had nothing parked joins at the lot's current position, not at 0.
    _fair_park(parking, holder, "late-0", "late")
    released = dataclasses.replace(holder, owner="big-0" + HANDOFF_OWNER_SUFFIX)
    assert parking.claim("big-0", holder.key)
    assert backend.release([released]) == [2]
    order = ["big-0", *_drain_order(backend, parking, holder)]
    # Weighted fair queuing: big (weight 2) takes two slots for each one of mid, and
    # "late" waits one round of the others (3 slots: 2 big, 1 mid), not their backlog.
    assert order == [
        "big-0",
        "big-1",
        "mid-0",
        "big-2",
        "late-0",
        "big-3",
        "mid-1",
        "big-4",
        "big-5",
        "mid-2",
    ]
