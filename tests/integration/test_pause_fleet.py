"""Feedback from the downstream service across real workers (issue 16 part 3): a task that
gets a 429 pauses the shared rate limit's bucket, and no worker starts a task of that
bucket until the pause is over; the pausing task defers itself without spending a retry.

Times are Redis ``TIME``, recorded by the tasks (tests/integration/apps/feedback.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from .conftest import Fleet

APP = "tests.integration.apps.feedback"
PAUSE = 2.0  # seconds: the partner's Retry-After
INTERVAL = 0.1  # the partner-api limit, 10/s per customer


def test_a_pause_holds_every_worker_until_it_ends(fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(app=APP, settings={"deferral_jitter": 0.02})
    fleet.start(count=2, concurrency=2)
    pauser = fleet.send("call", "acme", 0, PAUSE)
    [paused] = fleet.wait_for("paused", lambda records: len(records) == 1, timeout=30)
    # Sent while the pause holds: every one is refused, and reserves a slot after it.
    acme = [fleet.send("call", "acme", i) for i in range(1, 11)]
    globex = [fleet.send("call", "globex", i) for i in range(1, 4)]
    results = [pauser, *acme, *globex]
    assert sorted(r.get(timeout=60) for r in results) == sorted([0, *range(1, 11), *range(1, 4)])

    runs = fleet.records("runs")
    counts = Counter(r["id"] for r in runs)
    assert set(counts) == {r.id for r in results}
    assert set(counts.values()) == {1}, "each task runs to the end exactly once"
    assert {r["retries"] for r in runs} == {0}, "no retry is ever spent"
    # One deferral each: the pausing task's own, and the refusal of each other acme task
    # (which reserved its slot after the pause at once).
    assert {r["deferrals"] for r in runs if r["customer"] == "acme"} == {1}

    # The window the pause surely covers: from the end of the call that set it to the
    # start of that call plus the pause (both in Redis time).
    window = (paused["after"], paused["before"] + PAUSE)
    starts = [s for s in fleet.records("starts") if s["id"] != pauser.id or s["deferrals"]]
    acme_starts = sorted(s["start"] for s in starts if s["customer"] == "acme")
    assert len(acme_starts) == 11
    inside = [t - window[0] for t in acme_starts if window[0] <= t < window[1]]
    assert not inside, f"acme tasks started inside the pause, at +{inside} s"
    # The pausing task holds the first slot after the pause; the backlog then drains at
    # the limit's pace: at most 10 a second.
    [resumed] = [s for s in starts if s["id"] == pauser.id]
    assert resumed["start"] == acme_starts[0]
    assert window[1] <= resumed["start"] < window[1] + 0.5
    assert acme_starts[-1] - acme_starts[0] >= (len(acme_starts) - 1) * INTERVAL * 0.9
    # Another customer's bucket is not paused: its tasks ran during the pause.
    globex_starts = [s["start"] for s in starts if s["customer"] == "globex"]
    assert min(globex_starts) < window[1]
    # The refused tasks ran on more than one worker process: the pause is fleet-wide.
    assert len({s["pid"] for s in starts if s["customer"] == "acme"}) > 1
