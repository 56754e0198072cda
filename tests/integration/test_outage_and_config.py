"""Workers keep running through a Redis outage, and refuse to start on bad settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from taskguard.testing import RedisServer

from .conftest import Fleet


def test_worker_survives_redis_outage_following_policy(
    fleet_factory: Callable[..., Fleet], private_redis: RedisServer
) -> None:
    """Guard state lives on a Redis the test owns; the broker stays up on another."""
    fleet = fleet_factory(guard_url=private_redis.url, settings={"deferral_jitter": 0.05})
    fleet.start(count=1, concurrency=2)
    [worker] = fleet.workers

    before = fleet.send("outage_allow", 0)
    assert before.get(timeout=30) == 0

    private_redis.stop()
    # allow: runs without its guard while Redis is down.
    allowed = [fleet.send("outage_allow", i) for i in range(1, 11)]
    assert sorted(r.get(timeout=30) for r in allowed) == list(range(1, 11))
    # deny (a rate limit set to deny; a lock and a concurrency cap deny by default):
    # deferred, not failed, and not run, while Redis is down.
    denied = [fleet.send("outage_deny", i) for i in range(5)]
    locked = [fleet.send("outage_lock", i) for i in range(3)]
    slotted = [fleet.send("outage_slot", i) for i in range(3)]
    fleet.wait_for("deferred", lambda recs: len({r["id"] for r in recs}) >= 11, timeout=30)
    assert all(r.state == "PENDING" for r in denied + locked + slotted)
    outage_runs = ("_deny", "_lock", "_slot")
    assert not [r for r in fleet.records("runs") if r["name"].endswith(outage_runs)]
    assert worker.is_alive()

    private_redis.start()
    assert sorted(r.get(timeout=60) for r in denied) == list(range(5))
    assert sorted(r.get(timeout=60) for r in locked) == list(range(3))
    assert sorted(r.get(timeout=60) for r in slotted) == list(range(3))
    assert worker.is_alive()
    runs = [r for r in fleet.records("runs") if r["name"].endswith(".outage_deny")]
    assert len(runs) == 5
    assert {r["retries"] for r in runs} == {0}
    assert "backend unavailable" in worker.log()
    assert "Traceback" not in worker.log()


@pytest.mark.parametrize(
    ("settings", "task", "field"),
    [
        # A tasks entry is named by its pattern...
        ({"tasks": {"*.steady": {"rate_limit": "10/x"}}}, "*.steady", "rate_limit"),
        ({"tasks": {"*.steady": {"rate_limit": "10/s", "burst": -1}}}, "*.steady", "burst"),
        ({"tasks": {"*.steady": {"colour": "red"}}}, "*.steady", "colour"),
        ({"tasks": {"*.steady": {"max_deferrals": "ten"}}}, "*.steady", "max_deferrals"),
        # ...a key checked against a task's signature by the task's name...
        (
            {"tasks": {"*.takes_customer": {"rate_limit_key": "{account_id}"}}},
            "tests.integration.apps.guarded.takes_customer",
            "key",
        ),
        # ...and a global setting by its field alone.
        ({"socket_timeout": "fast"}, None, "socket_timeout"),
    ],
)
def test_invalid_settings_stop_the_worker(
    fleet_factory: Callable[..., Fleet], settings: dict[str, Any], task: str | None, field: str
) -> None:
    fleet = fleet_factory(settings=settings)
    worker = fleet.worker(concurrency=1)
    worker.start(wait=False)
    assert worker.process is not None
    code = worker.process.wait(60)
    log = worker.log()
    assert code != 0, log[-2000:]
    line = next(x for x in log.splitlines() if x.startswith("taskguard.errors.ConfigurationError"))
    where = f"[field {field!r}]" if task is None else f"[task {task!r}, field {field!r}]"
    assert where in line
    assert "ready." not in log
