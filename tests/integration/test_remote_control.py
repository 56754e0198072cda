"""Celery remote control on a real worker: ``taskguard_status`` answers with the worker's
guarded tasks and the lease its heartbeat renews for a running task, and the control
commands change guard state through the broker (threads pool: tasks run in the process
that answers)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import taskguard
from taskguard.celery import inspect_workers
from taskguard.keys import KeySchema
from taskguard.status import read_status
from taskguard.testing import WorkerProcess

from .conftest import ROOT, Fleet

APP = "tests.integration.apps.guarded"


def test_inspect_status_and_control_commands(fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory()
    worker = WorkerProcess(fleet.app, pool="threads", concurrency=2, env=fleet.env(), cwd=ROOT)
    fleet.workers.append(worker)
    worker.start()
    node = worker.hostname.replace("%h", socket.gethostname())
    held = fleet.send("hold5", "doc-1", 2.0)
    fleet.wait_for("runs", lambda runs: any(r["id"] == held.id for r in runs), timeout=20)

    views = inspect_workers(fleet.celery, destination=[node], timeout=5.0)

    view = views[node]
    assert view["prefix"] == fleet.prefix
    assert (view["pool"], view["tasks_run_here"]) == ("thread", True)
    assert view["backend"]["reachable"] is True
    assert view["tasks"][f"{APP}.steady"]["guards"] == [f"RateLimit('20/s', name='{APP}.steady')"]
    assert [r["id"] for r in view["running"]] == [held.id]
    [lease] = view["leases"]
    assert lease["owner"].startswith(held.id)
    assert lease["key"] == KeySchema(fleet.prefix).lock("hold5", "doc-1")
    assert view["limits"][f"{APP}.steady"]["set_at_run_time"] == []

    control = fleet.celery.control

    def ask(command: str, arguments: dict[str, object]) -> Any:
        """The node's reply to one control command."""
        [reply] = control.broadcast(
            command, arguments=arguments, destination=[node], reply=True, timeout=5.0
        )
        return reply[node]

    assert ask("taskguard_limit_set", {"name": f"{APP}.steady", "rate": "5/s", "burst": 2}) == {
        "ok": f"rate limit '{APP}.steady', every bucket: 5/s (burst 2) from now on"
    }
    assert ask("taskguard_limit_set", {"name": "rc-exports", "value": "3", "kind": "cap"}) == {
        "ok": "concurrency cap 'rc-exports', every key: 3 slots from now on"
    }
    assert ask(
        "taskguard_limit_set",
        {"name": "rc-sms", "value": "500/day", "key": "+4411", "kind": "quota"},
    ) == {"ok": "quota 'rc-sms', key '+4411': 500/day from now on"}
    assert (
        ask("taskguard_breaker", {"action": "open", "name": "rc-partner"})["after"] == "forced_open"
    )

    client = taskguard.connect(fleet.guard_url, prefix=fleet.prefix)
    try:
        [override] = client.limits(f"{APP}.steady")
        assert (override.per_second, override.burst) == (5.0, 2)
        breakers = {b.name: b.state for b in read_status(client).breakers}
        assert breakers["rc-partner"] == "forced_open"
        assert [(c.key, c.limit) for c in client.caps("rc-exports")] == [(None, 3)]
        assert [(q.key, str(q)) for q in client.quotas("rc-sms")] == [("+4411", "500/day")]
        assert ask("taskguard_limit_clear", {"name": "rc-exports", "kind": "cap"})["ok"].endswith(
            "back to its configured slot count"
        )
        assert client.caps("rc-exports") == []
    finally:
        client.close()
    limits = inspect_workers(fleet.celery, destination=[node], timeout=5.0)[node]["limits"]
    assert limits[f"{APP}.steady"]["set_at_run_time"] == [
        {"key": None, "per_second": 5.0, "burst": 2}
    ]
    assert held.get(timeout=20) is False  # the lock was held throughout, never lost
