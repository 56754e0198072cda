"""Breaker invariants under random traffic: memory backend, fake clock, hypothesis.

Each example builds a breaker from drawn options, then replays drawn steps: move time,
start a call (``Breaker.try_acquire``), or finish one of the calls in flight
(``BreakerCall.record`` with an outcome). Calls overlap, so outcomes also arrive after
the breaker moved on. After every step the breaker is checked against a small model
built only from the ``circuit_state_changed`` signals it sent.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import taskguard
from taskguard import Breaker, signals
from taskguard.backend.builtin_kinds import breaker_states
from taskguard.clock import FakeClock
from taskguard.guards.breaker import BreakerCall

ALLOWED = {
    ("closed", "open"),
    ("open", "half_open"),
    ("half_open", "open"),
    ("half_open", "closed"),
}
SLOW = 1.0  # slow_call_duration


class Ignored(Exception):
    """An exception the breakers under test ignore."""


#: How BreakerCall.record is called for each outcome code: (exception, duration).
RECORD: dict[str, tuple[BaseException | None, float]] = {
    "s": (None, 0.0),
    "S": (None, SLOW * 2),
    "f": (ValueError("down"), 0.0),
    "F": (ValueError("down"), SLOW * 2),
    "i": (Ignored(), 0.0),
}

options = st.fixed_dictionaries(
    {
        "window": st.integers(1, 6),
        "window_type": st.sampled_from(["count", "time"]),
        "minimum_calls": st.integers(1, 6),
        "failure_rate": st.sampled_from([0.0, 0.25, 0.5, 1.0]),
        "slow_call_rate": st.sampled_from([None, 0.5]),
        "consecutive_failures": st.integers(0, 3),
        "open_for": st.sampled_from([1.0, 2.5]),
        "open_growth": st.sampled_from([1.0, 2.0]),
        "max_open_scale": st.sampled_from([1.0, 3.0]),
        "half_open_probes": st.integers(1, 3),
        "successes_to_close": st.integers(1, 3),
        "probe_ttl": st.sampled_from([0.5, 30.0]),
    }
)
#: A step: ("advance", seconds), ("start", 0), or (outcome, n): finish the n-th call in
#: flight (modulo their number) or, with nothing in flight, start one and finish it.
steps = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.sampled_from([0.05, 0.3, 0.99, 1.0, 2.5, 5.0])),
        st.tuples(st.just("start"), st.just(0)),
        st.tuples(st.sampled_from("ffFssSi"), st.integers(0, 7)),
    ),
    min_size=20,
    max_size=120,
)


@contextmanager
def transitions() -> Iterator[list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []

    def receiver(sender: Any = None, **kwargs: Any) -> None:
        seen.append((kwargs["old"], kwargs["new"]))

    signals.circuit_state_changed.connect(receiver, weak=False)
    try:
        yield seen
    finally:
        signals.circuit_state_changed.disconnect(receiver)


@dataclass
class Model:
    """What the signals say: the stored state, when it opened, and the count window."""

    open_for: float
    growth: float
    max_open: float
    state: str = "closed"
    opened_at: float = 0.0
    opens: int = 0
    window: list[str] = field(default_factory=list)

    def follow(self, events: list[tuple[str, str]], now: float) -> None:
        for old, new in events:
            assert (old, new) in ALLOWED, f"{old} -> {new}"
            assert old == self.state, f"{old} -> {new} while {self.state}"
            self.state = new
            if new == "open":
                self.opens += 1
                self.opened_at = now
            if new in ("open", "closed"):
                self.window.clear()
            if new == "closed":
                self.opens = 0

    @property
    def open_until(self) -> float:
        held = self.open_for * self.growth ** (self.opens - 1)
        return self.opened_at + min(held, self.max_open)


@settings(deadline=None, max_examples=400)
@given(options=options, steps=steps)
def test_random_traffic_keeps_the_invariants(options: dict[str, Any], steps: list[Any]) -> None:
    clock = FakeClock()
    backend = taskguard.MemoryBackend(clock=clock)
    scale = options.pop("max_open_scale")
    b = taskguard.connect(backend).circuit_breaker(
        "svc",
        **options,
        max_open_for=options["open_for"] * scale,
        slow_call_duration=SLOW,
        ignore_exceptions=(Ignored,),
    )
    model = Model(options["open_for"], options["open_growth"], options["open_for"] * scale)
    state = breaker_states(backend.state).get(b.spec.call_op(backend.keys, "-").key)
    in_flight: list[BreakerCall] = []
    with transitions() as events:
        for action, arg in steps:
            now = clock.time()
            if action == "advance":
                clock.advance(arg)
            elif action == "start" or not in_flight:
                call = start(b, model, now)
                if call is not None:
                    in_flight.append(call)
            if action in RECORD and in_flight:
                call = in_flight.pop(arg % len(in_flight))
                model.follow(events, now)  # a probe just admitted may have moved it
                events.clear()
                exc, duration = RECORD[action]
                call.record(exc, duration)
                if model.state == "closed" and action != "i":
                    model.window.append(action)
            model.follow(events, now)
            events.clear()
            check(b, model, state, options, clock.time())


def start(b: Breaker, model: Model, now: float) -> BreakerCall | None:
    """Ask for a call; check the answer against the model."""
    decision = b.try_acquire()
    if not decision.allowed:
        if model.state == "open" and now < model.open_until:
            assert abs(decision.retry_after - (model.open_until - now)) < 1e-6
        else:
            assert 0 < decision.retry_after <= 1.0  # every probe permit is out
        return None
    # Open lasts at least its (grown) open time: nothing passes before.
    assert model.state != "open" or now >= model.open_until - 1e-9
    assert isinstance(decision.lease, BreakerCall)
    return decision.lease


def check(b: Breaker, model: Model, state: Any, options: dict[str, Any], now: float) -> None:
    observed = b.state
    if model.state == "open" and now >= model.open_until:
        assert observed == "half_open"  # due: the first probe will store it
    else:
        assert observed == model.state
    assert state.state == model.state
    live = [owner for owner, expires in state.probes.items() if expires > now]
    assert len(live) <= options["half_open_probes"]
    if model.state != "half_open":
        assert not live
    if options["window_type"] == "count":
        assert list(state.calls) == model.window[-options["window"] :]
    else:
        assert sum(bucket[0] for bucket in state.buckets.values()) <= len(model.window)
