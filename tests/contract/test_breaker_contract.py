"""The circuit breaker, one contract on two backends: memory (fake clock) and real Redis.

Outcomes are recorded with their codes (``s`` success, ``S`` slow success, ``f`` failure,
``F`` slow failure, ``i`` ignored) straight through ``backend.release``, which returns the
transition made (1 closed>open, 2 half_open>open, 3 half_open>closed). Time passes through
``elapse``: the fake clock on memory, real time on Redis, so durations stay short and
the Redis half asserts bounds.
"""

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import redis

import taskguard
from taskguard import Breaker
from taskguard.guards.breaker import BreakerCall

from .harness import REDIS_ONLY, Contract

OPEN = 0.3  # open_for in these tests: short enough to wait through on Redis


@dataclass
class Harness:
    backend: taskguard.Backend
    elapse: Callable[[float], None]
    client: redis.Redis | None = None

    def next_second(self) -> None:
        """Move to 50 ms past the start of the next whole second (time windows)."""
        now = self.backend.time()
        self.elapse(math.floor(now) + 1.05 - now)


@pytest.fixture
def h(contract: Contract) -> Harness:
    return Harness(contract.backend, contract.elapse, contract.client)


def breaker(h: Harness, name: str = "svc", **options: object) -> Breaker:
    return taskguard.connect(h.backend).circuit_breaker(name, open_for=OPEN, **options)  # type: ignore[arg-type]


def admit(b: Breaker) -> BreakerCall:
    decision = b.try_acquire()
    assert decision.allowed, f"refused, retry_after={decision.retry_after}"
    assert isinstance(decision.lease, BreakerCall)
    return decision.lease


def record(b: Breaker, call: BreakerCall, code: str) -> int:
    return b.backend.release([dataclasses.replace(call.op, mode=code)])[0]


def run(b: Breaker, codes: str) -> list[int]:
    """One call per outcome code, each admitted then recorded; the transitions made."""
    return [record(b, admit(b), code) for code in codes]


def trip(b: Breaker) -> None:
    for _ in range(100):
        if run(b, "f") == [1]:
            return
    raise AssertionError("never tripped")


def test_count_window_trips_at_the_failure_rate_only_after_minimum_calls(h: Harness) -> None:
    b = breaker(h, window=10, minimum_calls=4, failure_rate=0.5)
    assert run(b, "fff") == [0, 0, 0]  # 100 % failures, but only 3 calls
    assert b.state == "closed"
    assert run(b, "s") == [1]  # 3 of 4 >= 50 %
    assert b.state == "open"
    c = breaker(h, "other", window=10, minimum_calls=4, failure_rate=0.5)
    assert run(c, "sssff") == [0] * 5  # 1/4, then 2/5: below the rate
    assert run(c, "f") == [1]  # 3/6
    assert not c.try_acquire()


def test_the_window_slides_old_outcomes_leave(h: Harness) -> None:
    b = breaker(h, window=4, minimum_calls=4, failure_rate=0.5)
    # [f s s s] 1/4, then [s s s s], then [s s s f]: had the first f stayed, 2/4 would trip.
    assert run(b, "fsssSf") == [0] * 6
    c = breaker(h, "other", window=4, minimum_calls=4, failure_rate=0.75)
    # [s s f f] 1/2 ... [s f f f] 3/4 trips on the 9th call, though 5/9 overall never would.
    assert run(c, "ffssssff") == [0] * 8
    assert run(c, "f") == [1]


def test_time_window_buckets_expire(h: Harness) -> None:
    b = breaker(h, window_type="time", window=1, minimum_calls=3, failure_rate=0.5)
    h.next_second()
    assert run(b, "ff") == [0, 0]
    h.next_second()  # the last second's bucket has left the 1-second window
    assert run(b, "ssf") == [0, 0, 0]  # 1/3 (with the old bucket: 3/5 would trip)
    assert run(b, "f") == [1]  # 2/4
    assert b.state == "open"


def test_slow_call_rate_alone_trips(h: Harness) -> None:
    b = breaker(h, window=4, minimum_calls=4, failure_rate=1.0, slow_call_rate=0.5)
    assert run(b, "SsF") == [0, 0, 0]  # 3 calls < minimum; F is slow and failed
    assert run(b, "s") == [1]  # 2 slow of 4, 1 failure of 4
    c = breaker(h, "other", window=4, minimum_calls=4, failure_rate=1.0)
    assert run(c, "SSSSSS") == [0] * 6  # slow_call_rate None: slowness never trips


def test_consecutive_failures_trip_and_a_success_resets_them(h: Harness) -> None:
    b = breaker(h, consecutive_failures=3, window=100, minimum_calls=100)
    assert run(b, "ffsffSff") == [0] * 8  # any success resets the run of failures
    assert run(b, "F") == [1]
    assert b.state == "open"


def test_open_refuses_for_the_remaining_open_time(h: Harness) -> None:
    b = breaker(h, consecutive_failures=1)
    since = time.monotonic()
    trip(b)
    refused = b.try_acquire()
    assert not refused
    # Counted from the trip: on Redis the real time since (as long as a busy machine
    # makes it) comes off; on memory only the fake clock's elapse does.
    assert OPEN - (time.monotonic() - since) - 0.002 <= refused.retry_after <= OPEN
    h.elapse(0.1)
    later = b.try_acquire()
    gone = max(time.monotonic() - since, 0.1)
    assert OPEN - gone - 0.002 <= later.retry_after <= OPEN - 0.1 + 0.005
    assert (b.state, b.is_open()) == ("open", True)
    with pytest.raises(taskguard.CircuitOpen) as info:
        b.call(lambda: "never runs")
    gone = max(time.monotonic() - since, 0.1)
    assert OPEN - gone - 0.002 <= info.value.retry_after <= later.retry_after + 0.002


def test_half_open_admits_exactly_the_probes_then_asks_to_retry_soon(h: Harness) -> None:
    b = breaker(h, consecutive_failures=1, half_open_probes=2, probe_ttl=30)
    trip(b)
    h.elapse(OPEN + 0.05)
    assert (b.state, b.is_open()) == ("half_open", False)
    first, second = admit(b), admit(b)
    assert (first.probe, second.probe) == (True, True)
    assert b.state == "half_open"
    full = b.try_acquire()
    assert not full
    assert 0 < full.retry_after <= 1.0  # probes end long before their 30 s leases
    assert record(b, first, "s") == 0  # one success of two: still half-open
    third = admit(b)  # its permit is free again
    assert third.probe
    assert record(b, second, "s") == 3
    assert b.state == "closed"
    assert record(b, third, "s") == 0  # closed since: an ordinary call now
    assert b.state == "closed"


def test_probe_successes_close_and_reset_the_growth(h: Harness) -> None:
    b = breaker(h, consecutive_failures=1, open_growth=2, max_open_for=10)
    trip(b)
    h.elapse(OPEN + 0.05)
    assert record(b, admit(b), "f") == 2  # re-opened, for twice as long
    assert b.try_acquire().retry_after > OPEN * 1.5
    h.elapse(2 * OPEN + 0.05)
    assert record(b, admit(b), "s") == 3
    assert b.state == "closed"
    assert run(b, "sss") == [0, 0, 0]
    trip(b)  # a fresh trip after closing opens for the base time again
    assert b.try_acquire().retry_after <= OPEN


def test_failed_probes_grow_the_open_time_up_to_the_cap(h: Harness) -> None:
    b = breaker(h, consecutive_failures=1, open_growth=2, max_open_for=0.5)
    trip(b)
    waits = []
    for _ in range(3):
        waits.append(b.try_acquire().retry_after)
        h.elapse(waits[-1] + 0.05)
        call = admit(b)
        assert call.probe
        assert record(b, call, "f") == 2
    waits.append(b.try_acquire().retry_after)
    assert waits == pytest.approx([0.3, 0.5, 0.5, 0.5], abs=0.06)  # 0.3, 0.6 -> 0.5, ...


def test_outcomes_of_calls_admitted_before_the_trip_do_not_count(h: Harness) -> None:
    b = breaker(h, consecutive_failures=2, open_growth=3)
    late = [admit(b) for _ in range(3)]
    assert [record(b, call, "f") for call in late[:2]] == [0, 1]
    before = b.try_acquire().retry_after
    assert record(b, late[2], "f") == 0  # no second open, no growth
    assert b.try_acquire().retry_after <= before
    h.elapse(OPEN + 0.05)
    probe = admit(b)
    assert record(b, probe, "s") == 3


def test_an_ignored_outcome_counts_for_nothing_and_frees_a_probe(h: Harness) -> None:
    b = breaker(h, window=10, minimum_calls=3, failure_rate=0.5, consecutive_failures=2)
    assert run(b, "fiiiii") == [0] * 6  # neither a call for the rate nor a success
    assert run(b, "f") == [1]  # so this is the 2nd consecutive failure
    h.elapse(OPEN + 0.05)
    probe = admit(b)
    assert not b.try_acquire()
    assert record(b, probe, "i") == 0
    assert b.state == "half_open"
    assert admit(b).probe


def test_forced_states(h: Harness) -> None:
    b = breaker(h, consecutive_failures=1)
    b.force_open()
    assert (b.state, b.is_open()) == ("forced_open", True)
    refused = b.try_acquire()
    assert not refused
    assert refused.retry_after == pytest.approx(OPEN)
    h.elapse(OPEN + 0.05)
    assert b.state == "forced_open"  # no half-open: it stays open until told otherwise
    b.disable()
    assert (b.state, b.is_open()) == ("disabled", False)
    assert run(b, "ffff") == [0] * 4  # let through, recorded nowhere
    assert b.state == "disabled"
    b.force_close()
    assert b.state == "closed"
    assert run(b, "f") == [1]  # counting again
    b.force_close()
    assert (b.state, run(b, "s")) == ("closed", [0])


def test_reset_forgets_the_state_and_the_growth(h: Harness) -> None:
    b = breaker(h, consecutive_failures=2, open_growth=4)
    trip(b)
    h.elapse(OPEN + 0.05)
    assert run(b, "f") == [2]  # open for 4 x open_for now
    b.reset()
    assert b.state == "closed"
    assert run(b, "f") == [0]  # the consecutive count was forgotten too
    assert run(b, "f") == [1]
    assert b.try_acquire().retry_after <= OPEN  # growth forgotten


def test_breakers_are_independent_by_name(h: Harness) -> None:
    a, b = breaker(h, "a", consecutive_failures=1), breaker(h, "b", consecutive_failures=1)
    trip(a)
    assert (a.state, b.state) == ("open", "closed")
    same = breaker(h, "a", consecutive_failures=1)  # a new handle, the same shared state
    assert same.state == "open"


@REDIS_ONLY
def test_every_key_has_a_ttl_and_counters_match_the_window(h: Harness) -> None:
    assert h.client is not None
    count = breaker(h, "count", window=3, minimum_calls=3, failure_rate=0.9)
    timed = breaker(h, "timed", window_type="time", window=5, minimum_calls=50)
    run(count, "sfSFsfs")  # a trip clears the window
    run(timed, "sfSFsfs")
    probing = breaker(h, "probing", consecutive_failures=1, probe_ttl=5)
    run(probing, "s")
    trip(probing)
    h.elapse(OPEN + 0.05)
    admit(probing)  # a live probe: the probes' sorted set exists
    forced = breaker(h, "forced")
    run(forced, "s")
    forced.force_open()
    keys = list(h.client.scan_iter(match=f"{h.backend.keys.prefix}:*"))
    assert len(keys) >= 6
    ttls = {key.decode(): h.client.pttl(key) for key in keys}
    assert all(0 < ttl <= 86_400_000 for ttl in ttls.values()), ttls
    window = [c.decode() for c in h.client.lrange(h.backend.keys.breaker_window("count"), 0, -1)]
    fields = h.client.hmget(h.backend.keys.breaker("count"), "wc", "wf", "ws")
    assert window == ["s", "f", "s"]
    assert [int(v) for v in fields] == [3, 1, 0]


@REDIS_ONLY
def test_a_fresh_breakers_state_has_a_ttl_after_one_call(h: Harness) -> None:
    assert h.client is not None
    run(breaker(h, consecutive_failures=0), "s")
    assert h.client.pttl(h.backend.keys.breaker("svc")) > 0


def test_a_probe_that_outlived_its_lease_does_not_count(h: Harness) -> None:
    b = breaker(h, consecutive_failures=1, half_open_probes=2, successes_to_close=1, probe_ttl=0.4)
    trip(b)
    h.elapse(OPEN + 0.05)
    expired = admit(b)
    h.elapse(0.25)
    admit(b)  # a second probe keeps the probes' set alive
    h.elapse(0.2)  # the first probe's lease has run out
    assert record(b, expired, "s") == 0
    assert b.state == "half_open"
