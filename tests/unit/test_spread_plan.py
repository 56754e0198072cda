"""The plan of an admission across Cluster slots (taskguard/backend/spread.py), without a
server: groups by slot in a fixed order, the undo of each op kind, and the merged answer."""

from __future__ import annotations

from redis.crc import key_slot

from taskguard.backend.memory import MemoryBackend
from taskguard.backend.ops import Admission, BreakerOp, LeaseOp, PauseOp, RateOp, SlotOp
from taskguard.backend.spread import by_slot, granted_across, in_order, refused_across, undo_ops
from taskguard.clock import FakeClock
from taskguard.keys import KeySchema

KEYS = KeySchema("tg", spread=True)


def _slot(key: str) -> int:
    return int(key_slot(key.encode()))


def test_groups_follow_slot_order_and_ops_that_cannot_be_undone_go_last() -> None:
    ops = [RateOp(KEYS.rate_limit("r", str(i)), interval=1.0, burst=1) for i in range(6)] + [
        PauseOp(KEYS.rate_limit("r", "p"), seconds=1.0)
    ]
    groups = by_slot(ops)
    assert sorted(i for g in groups for i in g) == list(range(7))
    slots = [_slot(ops[g[0]].key) for g in groups[:-1]]
    assert slots == sorted(slots)
    assert groups[-1] == [6]  # a pause has no undo: its slot is taken last
    assert by_slot(ops) == groups  # the same ops, the same order: every time


def test_the_undo_of_each_kind() -> None:
    rate = RateOp(KEYS.rate_limit("r", "1"), interval=1.0, burst=1)
    lock = LeaseOp(KEYS.lock("l", "1"), owner="o", ttl=5.0)
    drop = LeaseOp(KEYS.unique("u", "1"), owner="m", ttl=5.0, drop=True, purpose="claim")
    slot = SlotOp(KEYS.slots("s", "1"), owner="o", ttl=5.0, limit=1)
    breaker = BreakerOp("b", "bw", "bp", "o", "check", (), 5.0)
    pause = PauseOp(KEYS.rate_limit("r", "1"), seconds=1.0)
    ops = [rate, lock, drop, slot, breaker, pause]
    undone = undo_ops(ops, range(len(ops)))  # type: ignore[arg-type]
    assert undone[:4] == [rate, lock, drop, slot]  # each released by its own kind
    assert isinstance(undone[4], BreakerOp)
    assert undone[4].mode == "i"  # a probe given back, no outcome recorded
    assert len(undone) == 5  # a pause cannot be undone


def test_answers_merge_back_in_the_ops_order() -> None:
    ops = [RateOp("a", 1.0, 3), LeaseOp("b", "o", 5.0), RateOp("c", 1.0, 3)]
    groups = [[1], [0, 2]]
    merged = granted_across(
        ops, groups, [Admission(True, tokens=(42,)), Admission(True, remaining=1, tokens=(0, 0))]
    )
    assert merged == Admission(True, remaining=1, tokens=(0, 42, 0))
    refused = refused_across([0, 2], Admission(False, 2.5, denied=1, remaining=0))
    assert (refused.allowed, refused.denied, refused.retry_after) == (False, 2, 2.5)
    assert in_order(groups, [[7], [8, 9]], 3) == [8, 7, 9]


def test_a_refund_gives_back_exactly_the_tokens_one_call_took() -> None:
    clock = FakeClock(start=1000.0)
    backend = MemoryBackend(keys=KEYS, clock=clock)
    op = RateOp(KEYS.rate_limit("r", "1"), interval=10.0, burst=3)
    assert backend.admit([op]).remaining == 2
    assert backend.admit([op]).remaining == 1
    assert backend.release([op]) == [1]  # type: ignore[list-item]
    assert backend.admit([op]).remaining == 1  # one token came back, not the bucket
    claim = LeaseOp(KEYS.unique("u", "1"), owner="m", ttl=5.0, drop=True, purpose="claim")
    assert backend.release([claim]) == [1]  # a dropped claim restored
    assert backend.owner(claim.key) == "m"
