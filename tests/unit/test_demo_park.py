"""The demo's parking stage: its measures, table and verdict on made-up runs, its wiring.

The stage itself (real workers, a real Redis) runs in ``scripts/demo``; here the records
the workers would write are built by hand, so the arithmetic (makespan, occupancy, most
at once), the table and every reason for a FAIL are checked without a server.
"""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from taskguard import Concurrency, GuardedTask
from taskguard.demo.config import DemoConfig
from taskguard.demo.park_report import CapRun, ParkResult, park_held, park_rows, park_verdict
from taskguard.demo.park_stage import stage_concurrency
from taskguard.demo.report import Header, render_header, render_results
from taskguard.demo.status_view import render_status
from taskguard.demo.tasks import BY_TIME_TASK, CAP, PARKED_TASK, _taskguard_settings
from taskguard.status import Status
from taskguard.status.model import (
    BreakerStatus,
    LockHolder,
    ParkedLot,
    ParkedWork,
    SlotHolder,
    SlotSet,
)

DURATION = 0.3


def _run(
    tasks: int = 10,
    *,
    gap: float = 0.0,
    lanes: int = CAP,
    deferrals: int = 1,
    retries: int = 0,
    skip: int | None = None,
    again: int | None = None,
    peak_parked: int = 8,
) -> CapRun:
    """``tasks`` runs of :data:`DURATION` back to back on ``lanes`` lanes, ``gap`` between.

    The first ``lanes`` tasks got a slot at once (0 deferrals); the others were parked.
    """
    runs: list[dict[str, Any]] = []
    for n in range(tasks):
        if n == skip:
            continue
        start = 100.0 + (n // lanes) * (DURATION + gap)
        runs.append(
            {
                "n": n,
                "t": start,
                "end": start + DURATION,
                "retries": retries,
                "deferrals": 0 if n < lanes else deferrals,
                "worker": f"tgdemo-x-park{n % 3 + 1}@host",
            }
        )
    if again is not None:
        runs.append({**runs[again], "t": runs[-1]["end"], "end": runs[-1]["end"] + DURATION})
    return CapRun(tasks, DURATION, runs, peak_parked=peak_parked)


def _result(parked: CapRun, by_time: CapRun | None = None) -> ParkResult:
    return ParkResult(workers=3, concurrency=2, parked=parked, by_time=by_time)


def test_measures_of_a_run_that_kept_the_cap_busy() -> None:
    run = _run(10)
    assert run.ideal == pytest.approx(1.5)
    assert run.makespan == pytest.approx(1.5)
    assert run.ratio == pytest.approx(1.0)
    assert run.occupancy == pytest.approx(1.0)
    assert run.most_at_once == CAP  # an end and a start at the same time do not overlap
    assert run.deferrals_per_task == pytest.approx(0.8)
    assert (run.ran_once, run.ran_twice, run.missing, run.retries_spent) == (10, 0, 0, 0)


def test_a_clean_run_holds_and_says_so() -> None:
    result = _result(_run(10), by_time=_run(10, gap=0.9, deferrals=4, peak_parked=0))
    assert park_held(result)
    tag, sentence = park_verdict(result)
    assert tag == "HELD"
    assert "10 tasks of 0.3s published at once to 6 pool processes (3 workers x 2)" in sentence
    assert "never more than 2 ran at once" in sentence
    assert "parked in Redis (up to 8 at once)" in sentence
    assert "1.00x the ideal 1.5s, with the cap 100% occupied" in sentence
    assert "this demo asks 90%; 95% is the benchmark's goal" in sentence
    assert "0.80 deferrals per task; each of the 10 ran exactly once" in sentence
    assert "the same batch took 3.4x the ideal, with the cap 29% occupied" in sentence


def test_the_comparison_does_not_change_the_verdict() -> None:
    unfinished = _run(10, gap=0.9, skip=9)
    result = _result(_run(10), by_time=unfinished)
    assert park_held(result)
    assert "did not finish in time (9 of 10 ran)" in park_verdict(result)[1]


@pytest.mark.parametrize(
    ("run", "reason"),
    [
        (_run(9, lanes=3), "3 tasks ran at once, above the cap of 2"),
        (_run(10, skip=4), "1 of 10 tasks never ran"),
        (_run(10, again=3), "1 tasks ran more than once"),
        (_run(10, retries=1), "10 retries were spent"),
        (_run(10, gap=0.1), "the cap was 79% occupied, under the 90% this demo asks"),
    ],
    ids=["above-cap", "missing", "twice", "retries", "idle-slots"],
)
def test_each_failure_is_named(run: CapRun, reason: str) -> None:
    result = _result(run)
    assert not park_held(result)
    tag, sentence = park_verdict(result)
    assert tag == "FAIL"
    assert reason in sentence


def test_an_empty_run_fails_without_dividing_by_zero() -> None:
    run = CapRun(10, DURATION, [], timed_out=True)
    assert run.occupancy == 0.0
    assert not park_held(_result(run))
    assert "10 of 10 tasks never ran" in park_verdict(_result(run))[1]
    assert park_rows(_result(run))[1][2:4] == ("-", "-")


def test_rows_and_the_rendered_report() -> None:
    result = _result(_run(10), by_time=_run(10, gap=0.9, deferrals=4, peak_parked=0))
    head, parked, by_time = park_rows(result)
    assert head[0] == "Concurrency(2)"
    assert parked == (
        "parked (default)", "10", "1.5s", "1.00x", "100%", "2", "0.80", "10/10", "0", "8"
    )  # fmt: skip
    assert by_time[0] == "by time (park: False)"
    assert by_time[3] == "3.40x"  # 5 waves of 0.3s, 0.9s apart: 5.1s
    text = render_results([], park=result)
    assert "parked (default)" in text
    assert "ideal 10 x 0.3s / 2 = 1.5s" in text
    assert "  HELD  taskguard Concurrency(2): 10 tasks" in text
    assert max(len(line) for line in text.splitlines()) <= 110


def test_the_stage_has_at_least_four_pool_processes() -> None:
    assert stage_concurrency(3, 1) == 2
    assert stage_concurrency(2, 1) == 2
    assert stage_concurrency(5, 1) == 1
    assert stage_concurrency(4, 3) == 3
    assert all(w * stage_concurrency(w, 1) >= 4 for w in range(2, 17))


def test_header_names_the_cap() -> None:
    header = Header(
        version="0",
        redis_url="redis://127.0.0.1:1/0",
        redis_note="test",
        db_url="sqlite://",
        workers=3,
        concurrency=1,
        seconds=8,
        rate=10,
        prefix="tgdemo-x",
        park_concurrency=2,
    )
    assert "Concurrency(2) for the fleet: 40 tasks of 0.3s at once on 3 x `-c 2`" in (
        render_header(header)
    )


def test_one_capped_task_parks_the_other_defers_by_time() -> None:
    # The demo's own app (create_app) registers shared tasks and connects signal
    # handlers for the whole process; its settings are checked on an app of the test's.
    config = DemoConfig.new("redis://127.0.0.1:1/0")
    app = Celery("proj", broker="memory://", set_as_current=False)
    app.conf.taskguard = _taskguard_settings(config)
    try:
        tasks = [
            app.task(name=name, shared=False, base=GuardedTask, guards=[Concurrency(CAP)])(_noop)
            for name in (PARKED_TASK, BY_TIME_TASK)
        ]
        parked, by_time = (task.taskguard_settings for task in tasks)
        assert (parked.deferral.park, by_time.deferral.park) == (True, False)
        # Each has its own cap, named after its task.
        assert [s.guards[0].name for s in (parked, by_time)] == [PARKED_TASK, BY_TIME_TASK]
    finally:
        app.close()


def _noop(n: int, seconds: float) -> None: ...


def test_status_view_shows_what_the_guards_hold() -> None:
    holders = tuple(SlotHolder(f"task{n}abcdef:nonce", 29.6) for n in range(5))
    status = Status(
        prefix="tg",
        server_time=0.0,
        elapsed=0.004,
        slots=(SlotSet("demo.capped", None, holders),),
        parked=ParkedWork((ParkedLot("slots", "demo.capped", None, "tg:k", 34),), in_flight=1),
        locks=(LockHolder("lock", "report", "42", "abc12345xyz:n", 9.0, 17),),
        breakers=(BreakerStatus("partner", "open", 1.5, 1, "count", 10, 6, 0, 0, 0, 0),),
    )
    assert render_status(status, indent="") == [
        "slots    demo.capped: 5 held by task0abc (30s lease), task1abc (30s lease), "
        "task2abc (30s lease), +2",
        "parked   demo.capped: 34 task(s) waiting, FIFO, for a release to hand them back",
        "parked   1 hand-back(s) on their way to a worker",
        "lock     report[42]: held by abc12345, fencing token 17",
        "breaker  partner: open, 1.5s to a probe; window 10 calls, 6 failed",
    ]
    assert render_status(Status(prefix="tg", server_time=0.0, elapsed=0.0)) == []
