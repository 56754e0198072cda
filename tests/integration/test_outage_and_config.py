"""Workers keep running through a Redis outage, and refuse to start on bad settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from taskguard.backend.acl import acl_rules
from taskguard.testing import RedisServer, wait_until

from .conftest import Fleet, refused_start

ACL_PASSWORD = "acl-s3cret-pw"


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
    _, line = refused_start(fleet.worker(concurrency=1))
    where = f"[field {field!r}]" if task is None else f"[task {task!r}, field {field!r}]"
    assert where in line


def _acl_user(server: RedisServer, name: str, prefix: str, *extra: str) -> str:
    """An ACL user on the test's own server (never on the shared one); its URL."""
    admin = redis.Redis.from_url(server.url)
    try:
        admin.execute_command(
            "ACL", "SETUSER", name, "reset", "on", f">{ACL_PASSWORD}", *acl_rules(prefix), *extra
        )
    finally:
        admin.close()
    return f"redis://{name}:{ACL_PASSWORD}@127.0.0.1:{server.port}/0"


def test_a_redis_user_without_evalsha_stops_the_worker_with_a_clear_error(
    fleet_factory: Callable[..., Fleet], private_redis: RedisServer
) -> None:
    fleet = fleet_factory(guard_url=private_redis.url)
    fleet.guard_url = _acl_user(private_redis, "tg-noeval", fleet.prefix, "-evalsha")
    log, line = refused_start(fleet.worker(concurrency=1))
    assert "[field 'redis_url']" in line
    assert "may not run what taskguard needs" in line
    assert "'evalsha'" in line
    assert f"redis://tg-noeval:***@127.0.0.1:{private_redis.port}/0" in line
    assert ACL_PASSWORD not in log


def test_with_the_least_privilege_user_tasks_run_and_a_revoked_permission_fails_loudly(
    fleet_factory: Callable[..., Fleet], private_redis: RedisServer
) -> None:
    fleet = fleet_factory(guard_url=private_redis.url)
    fleet.guard_url = _acl_user(private_redis, "tg-least", fleet.prefix)
    fleet.start(count=1, concurrency=2)
    [worker] = fleet.workers
    assert fleet.send("steady", 1).get(timeout=30) == 1
    assert fleet.send("outage_lock", 2).get(timeout=30) == 2
    assert fleet.send("outage_slot", 3).get(timeout=30) == 3

    # EVALSHA revoked while the worker runs: an "allow" guard does not let the task through
    # unguarded; the task fails with the error, and the worker goes on.
    admin = redis.Redis.from_url(private_redis.url)
    admin.execute_command("ACL", "SETUSER", "tg-least", "-evalsha")
    failed = fleet.send("outage_allow", 4)
    with pytest.raises(Exception, match="NOPERM") as info:
        failed.get(timeout=30)
    assert type(info.value).__name__ == "BackendError"
    assert failed.state == "FAILURE"
    wait_until(lambda: "cannot check guard(s)" in worker.log(), timeout=10)
    line = next(x for x in worker.log().splitlines() if "cannot check guard(s)" in x)
    assert "outage_allow" in line
    assert "RateLimit('1000/s'" in line
    assert "NOPERM" in line
    assert not [r for r in fleet.records("runs") if r.get("i") == 4]
    assert worker.is_alive()

    admin.execute_command("ACL", "SETUSER", "tg-least", "+evalsha")
    admin.close()
    assert fleet.send("outage_allow", 5).get(timeout=30) == 5
    assert worker.is_alive()
    assert ACL_PASSWORD not in worker.log()
