"""Debounce across real workers: of a burst of calls for one key, only the newest runs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from taskguard.testing import wait_until

from .conftest import Fleet

APP = "tests.integration.apps.parked"


@pytest.mark.both_brokers
def test_only_the_newest_of_a_burst_runs_and_the_rest_say_superseded(
    fleet_factory: Callable[..., Fleet],
) -> None:
    """Six edits of document d1 (``send_task``, as ``delay()`` publishes the same
    message) and one of d2, on two workers: d1's last edit and d2's run, each once, about
    a second after the burst; the five earlier d1 calls end SUPERSEDED by a later call,
    never run."""
    fleet = fleet_factory(app=APP).start(count=2, concurrency=2)
    burst = [fleet.send("reindex", "d1", version) for version in range(6)]
    other = fleet.send("reindex", "d2", 0)
    assert burst[-1].get(timeout=30) == 5
    assert other.get(timeout=30) == 0
    fleet.wait_for(
        "runs", lambda rs: len([r for r in rs if r["name"] == "reindex"]) >= 2, timeout=10
    )
    for version, result in enumerate(burst[:-1]):
        wait_until(lambda r=result: r.state == "SUPERSEDED", timeout=10, message=result.id)
        # By a call published after it: the last one, or one that was newest when this
        # one reached a worker (messages can arrive out of order).
        later = {r.id for r in burst[version + 1 :]}
        assert result.info["superseded_by"] in later, (version, result.info)
    runs = [(r["doc"], r["version"]) for r in fleet.records("runs") if r["name"] == "reindex"]
    assert sorted(runs) == [("d1", 5), ("d2", 0)]
