"""Task uniqueness with real workers: each mode, and duplicates that bypass publish."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest

from taskguard import AlreadyQueued, signals

from .conftest import Fleet

APP = "tests.integration.apps.unique"
# What APP imports, configured from the environment when imported: its broker, queue, prefix.
CONFIGURED = (APP, "tests.integration.apps.guarded")
SIGNALS = [getattr(signals, n) for n in signals.__all__ if hasattr(getattr(signals, n), "send")]


@pytest.fixture(scope="module")
def fleet(fleet_factory: Callable[..., Fleet]) -> Fleet:
    return fleet_factory(app=APP).start(count=2, concurrency=2)


@pytest.fixture(scope="module")
def tasks(fleet: Fleet) -> Iterator[ModuleType]:
    """The task module in this process, configured like the fleet, to publish with.

    Imported afresh for each fleet (each broker), and forgotten after it: its modules, its
    connections and the signal receivers they connected (they record under the fleet's
    prefix).
    """
    saved = dict(os.environ)
    receivers = {signal: list(signal.receivers) for signal in SIGNALS}
    for name in CONFIGURED:
        sys.modules.pop(name, None)
    os.environ.update(fleet.env())
    try:
        module = importlib.import_module(APP)
        yield module
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for signal, saved_receivers in receivers.items():
            signal.receivers[:] = saved_receivers
            signal.sender_receivers_cache.clear()
        configured = [sys.modules.pop(name, None) for name in CONFIGURED]
        for loaded in configured:
            if loaded is not None:
                loaded.app.close()
        guarded = configured[-1]
        if guarded is not None:
            guarded._records.close()


def started(fleet: Fleet, task_id: str) -> None:
    fleet.wait_for("runs", lambda recs: any(r["id"] == task_id for r in recs), timeout=30)


def test_until_executing(fleet: Fleet, tasks: ModuleType) -> None:
    first = tasks.until_executing.apply_async(("a",), {"seconds": 3})
    duplicate = tasks.until_executing.apply_async(("a",), {"seconds": 3})
    assert duplicate.id == first.id  # the queued task's result, not a second message
    dup = fleet.wait_for("duplicates", lambda recs: any(r["stage"] == "publish" for r in recs))
    assert dup[0]["holder"] == first.id
    started(fleet, first.id)
    # Released when it started: the same work may be queued again while it runs.
    again = tasks.until_executing.apply_async(("a",))
    assert again.id != first.id
    assert again.get(timeout=30) == again.id
    assert first.get(timeout=30) == first.id


@pytest.mark.both_brokers
def test_until_executed(fleet: Fleet, tasks: ModuleType) -> None:
    first = tasks.until_executed.apply_async(("b",), {"seconds": 3})
    started(fleet, first.id)
    assert tasks.until_executed.apply_async(("b",)).id == first.id  # still running
    # A beat-style publish of a signature goes through the same check.
    assert tasks.until_executed.s("b").apply_async().id == first.id
    assert first.get(timeout=30) == first.id
    after = tasks.until_executed.apply_async(("b",))
    assert after.id != first.id
    assert after.get(timeout=30) == after.id


@pytest.mark.both_brokers
def test_send_task_duplicate_is_caught_at_run_time(fleet: Fleet, tasks: ModuleType) -> None:
    """send_task skips apply_async, so only the run-time check can catch it."""
    first = tasks.until_executed.apply_async(("c",), {"seconds": 4})
    started(fleet, first.id)
    bypass = fleet.send("until_executed", "c")
    rejected = fleet.wait_for("duplicates", lambda recs: any(r["id"] == bypass.id for r in recs))
    assert [(r["holder"], r["stage"]) for r in rejected if r["id"] == bypass.id] == [
        (first.id, "run")
    ]
    assert first.get(timeout=30) == first.id
    runs = [r for r in fleet.records("runs") if r["id"] == bypass.id]
    assert runs == [], "the bypassing duplicate must not run while the claim is held"
    assert bypass.state == "PENDING"  # Ignored: no result stored


def test_until_executing_and_while_executing(fleet: Fleet, tasks: ModuleType) -> None:
    first = tasks.both.apply_async(("d",), {"seconds": 3})
    started(fleet, first.id)
    second = tasks.both.apply_async(("d",), {"seconds": 0})
    assert second.id != first.id  # the claim was released when `first` started...
    assert tasks.both.apply_async(("d",)).id == second.id  # ...and `second` holds it now
    assert first.get(timeout=30) == first.id
    assert second.get(timeout=30) == second.id
    runs = {r["id"]: r for r in fleet.records("runs") if r["phase"] == "start"}
    ends = {r["id"]: r for r in fleet.records("runs") if r["phase"] == "end"}
    assert runs[second.id]["t"] >= ends[first.id]["t"]  # ...but it ran after `first`


def test_on_duplicate_raise(fleet: Fleet, tasks: ModuleType) -> None:
    first = tasks.strict.apply_async(("e",), {"seconds": 2})
    with pytest.raises(AlreadyQueued) as info:
        tasks.strict.apply_async(("e",))
    assert info.value.task_id == first.id
    assert first.get(timeout=30) == first.id
