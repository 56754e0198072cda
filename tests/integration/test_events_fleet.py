"""Guard events from a real prefork worker (-c 2), received by a subscriber in the test:
the pool processes publish (the worker's step installed publishing before the fork), and
the events setting is on without being set."""

from __future__ import annotations

import socket
from collections.abc import Callable

from taskguard import events
from taskguard.events import Event

from .conftest import Fleet

APP = "tests.integration.apps.evented"


def test_pool_processes_publish_breaker_and_deferral_events(
    fleet_factory: Callable[..., Fleet],
) -> None:
    fleet = fleet_factory(app=APP, settings={"tasks": {f"{APP}.capped": {"max_deferrals": 0}}})
    worker = fleet.worker(concurrency=2).start()
    seen: dict[str, Event] = {}
    with events.subscribe(fleet.guard_url, prefix=fleet.prefix, timeout=30) as stream:
        sent = [fleet.send("partner", i).id for i in range(2)]
        sent += [fleet.send("capped", i).id for i in range(2)]
        for event in stream:
            seen.setdefault(event.type, event)
            if {"circuit_state_changed", "deferral_exhausted"} <= set(seen):
                break
    opened = seen["circuit_state_changed"]
    assert (opened["name"], opened["old"], opened["new"]) == ("ev-partner", "closed", "open")
    assert opened["task_id"] in sent[:2]
    assert opened.host == socket.gethostname()
    assert opened.pid != worker.pid  # a pool process, forked after the step installed it
    exhausted = seen["deferral_exhausted"]
    assert (exhausted["task"], exhausted["policy"]) == (f"{APP}.capped", "fail")
    assert exhausted["task_id"] in sent[2:]
