"""The auditor's checks on hand-made histories: each passes a clean one and fails one that
breaks its rule, so a chaos test that passes has been checked by checks that can fail."""

from __future__ import annotations

import math

from .auditor import (
    Ack,
    Admission,
    FencedWrite,
    Holding,
    Kill,
    Moment,
    WorkerReport,
    cap_violations,
    crashed_workers,
    fencing_violations,
    lost_to_wipes,
    overlapping_holders,
    rate_violations,
    slow_recoveries,
    stale_reads,
    taskguard_tracebacks,
    unreported_losses,
    writebehind_violations,
)


def writes(*items: tuple[str, int, bool]) -> list[FencedWrite]:
    """(holder, token, accepted) on key ``k``, in the resource's order."""
    return [FencedWrite(seq, "k", h, token, ok) for seq, (h, token, ok) in enumerate(items)]


# ---------------------------------------------------------------- fencing


def test_fencing_passes_holders_in_token_order_and_refused_stale_writes() -> None:
    history = writes(("a", 5, True), ("a", 5, True), ("b", 7, True), ("a", 5, False))
    assert fencing_violations(history) == []


def test_fencing_fails_an_old_holder_accepted_after_a_new_one() -> None:
    # Equal tokens fool a resource that accepts token >= last: the auditor is not fooled.
    history = writes(("a", 5, True), ("b", 5, True), ("a", 5, True))
    found = fencing_violations(history)
    assert len(found) == 2
    assert "not above" in found[0]
    assert "a (token 5) wrote again" in found[1]


def test_fencing_fails_a_token_accepted_below_an_earlier_one() -> None:
    assert fencing_violations(writes(("a", 9, True), ("b", 4, True)))


def test_fencing_keys_are_independent() -> None:
    history = [FencedWrite(0, "x", "a", 9, True), FencedWrite(1, "y", "b", 4, True)]
    assert fencing_violations(history) == []


# ---------------------------------------------------------------- exclusivity


def test_overlap_passes_back_to_back_holders_and_lost_ones() -> None:
    history = [
        Holding("a", "k", 0.0, 1.0),
        Holding("b", "k", 1.0, 2.0),  # starts when a ends: handed over
        Holding("c", "k", 1.5, 3.0, lost=True),  # lost its lease: fencing's business
        Holding("d", "other", 1.5, 2.5),
    ]
    assert overlapping_holders(history) == []


def test_overlap_fails_two_holders_at_once() -> None:
    found = overlapping_holders([Holding("a", "k", 0.0, 1.0), Holding("b", "k", 0.9, 2.0)])
    assert found == ["k: 2 holders at 0.900 (limit 1): a, b"]


def test_overlap_counts_a_holder_still_running() -> None:
    assert overlapping_holders([Holding("a", "k", 0.0), Holding("b", "k", 5.0, 6.0)])


def test_unreported_losses() -> None:
    wipe = Moment(1.0, 1.1)
    assert unreported_losses([Holding("a", "k", 0.0, 2.0, lost=True)], [wipe]) == []
    before_and_after = [Holding("a", "k", 0.0, 0.5), Holding("b", "k", 1.2, 2.0)]
    assert unreported_losses(before_and_after, [wipe]) == []
    assert unreported_losses([Holding("a", "k", 0.0, 2.0)], [wipe])
    assert unreported_losses([Holding("a", "k", 0.0, math.inf)], [wipe])


def test_recovery_within_ttl_and_grace() -> None:
    history = [Holding("a", "k", 0.0, 1.0), Holding("b", "k", 3.9, 4.0)]
    assert slow_recoveries([Kill(1.0, "k")], history, ttl=2.0) == []
    assert slow_recoveries([Kill(0.5, "k")], history, ttl=2.0)  # 3.4 s > 3 s
    assert slow_recoveries([Kill(5.0, "k")], history, ttl=2.0)  # nobody after


# ---------------------------------------------------------------- caps


def test_cap_passes_at_the_limit() -> None:
    history = [Holding(h, "cap", s, e) for h, s, e in [("a", 0, 2), ("b", 1, 3), ("c", 2, 4)]]
    assert cap_violations(history, 2) == []


def test_cap_fails_one_holder_too_many() -> None:
    history = [Holding(h, "cap", s, e) for h, s, e in [("a", 0, 2), ("b", 1, 3), ("c", 1.5, 4)]]
    assert cap_violations(history, 2) == ["cap: 3 holders at 1.500 (limit 2): a, b, c"]


def test_cap_counts_holders_starting_at_the_same_instant() -> None:
    history = [Holding(h, "cap", 1.0, 2.0) for h in "abc"]
    assert cap_violations(history, 3) == []
    assert cap_violations(history, 2) == ["cap: 3 holders at 1.000 (limit 2): a, b, c"]


def test_cap_leaves_out_holders_that_lost_their_slot() -> None:
    history = [Holding("a", "cap", 0, 5, lost=True), Holding("b", "cap", 1, 2)]
    assert cap_violations(history, 1) == []


# ---------------------------------------------------------------- rate limits


def runs(*times: float) -> list[Admission]:
    return [Admission(t, t) for t in times]


def test_rate_passes_gcra_spacing_after_a_burst() -> None:
    history = runs(0.0, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # burst 2, then 5/s
    assert rate_violations(history, rate=5, burst=2, windows=[0.5, 1.0]) == []


def test_rate_fails_an_admission_beyond_limit_and_burst() -> None:
    history = runs(0.0, 0.0, 0.1, 0.2, 0.4)
    found = rate_violations(history, rate=5, burst=2, windows=[0.5])
    assert found == ["5 admissions in 0.5s from 0.000: 1 over burst 2 + 5/s, slack 0"]
    assert rate_violations(history, rate=5, burst=2, windows=[0.5], slack=1) == []


def test_rate_holds_each_bucket_to_the_bound_across_a_wipe() -> None:
    wipe = Moment(0.05, 0.06)
    # A bucket of 2 before the wipe, a new bucket of 2 after it: each within its bound.
    history = runs(0.0, 0.0, 0.1, 0.1)
    assert rate_violations(history, rate=5, burst=2, windows=[0.15])
    assert rate_violations(history, rate=5, burst=2, windows=[0.15], wipes=[wipe]) == []
    # A slot reserved before the wipe runs after it, on the old bucket's account...
    prepaid = [*runs(0.1, 0.1), Admission(0.12, charged=0.0)]
    assert rate_violations(prepaid, rate=5, burst=2, windows=[0.15], wipes=[wipe]) == []
    # ...but the new bucket alone is still held to its bound.
    fresh = runs(0.1, 0.1, 0.12)
    assert rate_violations(fresh, rate=5, burst=2, windows=[0.15], wipes=[wipe]) == [
        "3 admissions in 0.15s from 0.100 (bucket #2): 1 over burst 2 + 5/s, slack 0"
    ]


# ---------------------------------------------------------------- write-behind


def acks(*items: tuple[str, int, float]) -> list[Ack]:
    return [Ack(key, seq, at - 0.001, at) for key, seq, at in items]


def test_writebehind_passes_the_newest_write_stored() -> None:
    history = acks(("a", 1, 1.0), ("a", 2, 2.0), ("b", 1, 1.5))
    assert writebehind_violations(history, {"a": 2, "b": 1}) == []


def test_writebehind_fails_a_lost_and_an_older_value() -> None:
    history = acks(("a", 1, 1.0), ("a", 2, 2.0), ("b", 1, 1.5))
    found = writebehind_violations(history, {"a": 1})
    assert found == [
        "a: the store holds #1, older than write #2 (acknowledged at 2.000)",
        "b: write #1 (acknowledged at 1.500) is lost",
    ]


def test_writebehind_excuses_only_writes_made_before_a_wipe() -> None:
    history = acks(("a", 1, 1.0), ("b", 1, 1.0), ("b", 2, 3.0))
    wipe = Moment(2.0, 2.1)
    assert writebehind_violations(history, {"b": 2}, wipes=[wipe]) == []
    assert lost_to_wipes(history, {"b": 2}, [wipe]) == ["a"]
    assert writebehind_violations(history, {"a": 1, "b": 1}, wipes=[wipe])


def test_stale_reads() -> None:
    history = acks(("a", 1, 1.0), ("a", 2, 2.0))
    assert stale_reads(history, {"a": 2}) == []
    assert stale_reads(history, {"a": 1}) == ["a: a read returned #1, older than acknowledged #2"]
    assert stale_reads(history, {}, skip=["a"]) == []


# ---------------------------------------------------------------- workers

TASKGUARD_TRACEBACK = """\
[2026-11-25 10:00:00,000: ERROR/MainProcess] lease renewal crashed
Traceback (most recent call last):
  File "/srv/app/taskguard/heartbeat.py", line 150, in _run
    self.beat()
KeyError: 'x'
[2026-11-25 10:00:01,000: INFO/MainProcess] Task ok
"""

OTHER_TRACEBACK = """\
Traceback (most recent call last):
  File "/usr/lib/python3/dist-packages/kombu/connection.py", line 1, in f
    raise OSError()
OSError
"""


def test_tracebacks_through_taskguard_are_found() -> None:
    assert taskguard_tracebacks(TASKGUARD_TRACEBACK) == ["KeyError: 'x'"]
    assert taskguard_tracebacks(OTHER_TRACEBACK) == []


def test_crashed_workers() -> None:
    fine = [
        WorkerReport("w1", alive=True, killed=False, log=OTHER_TRACEBACK),
        WorkerReport("w2", alive=False, killed=True, log=""),
    ]
    assert crashed_workers(fine) == []
    assert crashed_workers([WorkerReport("w3", alive=False, killed=False, log="")]) == [
        "w3: exited, though the test did not kill it"
    ]
    assert crashed_workers([WorkerReport("w4", alive=True, killed=False, log=TASKGUARD_TRACEBACK)])
