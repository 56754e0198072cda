"""The remote control commands (taskguard.celery._control), called as the worker's pidbox
calls them: a handler with the worker's state, on the memory backend. A real worker
answering them over a broker is tests/integration/test_remote_control.py."""

import json
from typing import Any

import pytest
from celery.utils.collections import AttributeDict
from celery.worker.control import Panel

import taskguard
from taskguard import CircuitBreaker, GuardedTask, Lock, RateLimit
from taskguard.backend.ops import LeaseOp
from taskguard.heartbeat import heartbeat_for

from .celery_harness import DEAD_URL, celery_app

COMMANDS = {
    "taskguard_status": "inspect",
    "taskguard_breaker": "control",
    "taskguard_limit_set": "control",
    "taskguard_limit_clear": "control",
    "taskguard_refresh": "control",
}


def _state(app: Any) -> AttributeDict:
    return AttributeDict(app=app, hostname="w1@test", consumer=None)


@pytest.fixture
def client() -> taskguard.Client:
    # A prefix of its own: hot-path breakers other tests left in this process have theirs.
    return taskguard.connect("memory://", prefix="unit-control")


def test_commands_are_registered_with_celery_on_import() -> None:
    for name, kind in COMMANDS.items():
        assert name in Panel.data
        assert Panel.meta[name].type == kind


def test_status_shows_guarded_tasks_limits_and_leases(client: taskguard.Client) -> None:
    with celery_app(client.backend) as app:

        @app.task(
            shared=False, name="proj.sync", base=GuardedTask, guards=[RateLimit("20/s", burst=3)]
        )
        def sync() -> None: ...

        @app.task(
            shared=False, name="proj.render", base=GuardedTask, guards=[Lock(key="{doc}", ttl=30)]
        )
        def render(doc: str) -> None: ...

        @app.task(shared=False, name="proj.plain")
        def plain() -> None: ...

        client.set_limit("proj.sync", "5/s", burst=2)
        lease = LeaseOp("tg:{tg}:lock:x", owner="task-1", ttl=30.0)
        assert client.backend.admit([lease]).allowed
        handle = heartbeat_for(client.backend).add(lease)
        try:
            view = Panel.data["taskguard_status"](_state(app))
        finally:
            heartbeat_for(client.backend).remove(handle)

    json.dumps(view)  # what the pidbox sends back must be JSON
    assert (view["hostname"], view["prefix"], view["pool"]) == ("w1@test", "unit-control", None)
    assert sorted(view["tasks"]) == ["proj.render", "proj.sync"]
    assert view["tasks"]["proj.sync"]["guards"] == [
        repr(RateLimit("20/s", burst=3, name="proj.sync"))
    ]
    assert view["tasks"]["proj.sync"]["deferral"]["max_deferrals"] == 100
    assert view["limits"] == {
        "proj.sync": {
            "configured": ["20/s (burst 3)"],
            "set_at_run_time": [{"key": None, "per_second": pytest.approx(5.0), "burst": 2}],
        }
    }
    assert view["leases"] == [{"key": "tg:{tg}:lock:x", "owner": "task-1", "ttl": 30.0}]
    assert [b for b in view["hot_path_breakers"] if b["prefix"] == "unit-control"] == []
    assert view["backend"]["reachable"] is True
    assert (view["running"], view["parked"]) == ([], {})


def test_limit_commands_go_through_the_client(client: taskguard.Client) -> None:
    with celery_app(client.backend) as app:
        state = _state(app)
        done = Panel.data["taskguard_limit_set"](state, name="api", rate="10/s", burst=4)
        assert done == {"ok": "rate limit 'api', every bucket: 10/s (burst 4) from now on"}
        [override] = client.limits("api")
        assert (override.key, override.per_second, override.burst) == (None, 10.0, 4)
        bad = Panel.data["taskguard_limit_set"](state, name="api", rate="ten per second")
        assert "rate" in bad["error"]
        assert (
            "burst"
            in Panel.data["taskguard_limit_set"](state, name="api", rate="1/s", burst=0)["error"]
        )
        cleared = Panel.data["taskguard_limit_clear"](state, name="api")
        assert cleared == {"ok": "rate limit 'api', every bucket: back to its configured rate"}
        assert client.limits("api") == []
        again = Panel.data["taskguard_limit_clear"](state, name="api", key="t1")
        assert again == {"error": "no rate was set for 'api', bucket 't1'"}


def test_limit_commands_set_and_clear_caps_and_quotas(client: taskguard.Client) -> None:
    with celery_app(client.backend) as app:
        state = _state(app)
        command = Panel.data["taskguard_limit_set"]
        clear = Panel.data["taskguard_limit_clear"]
        done = command(state, name="exports", value="3", kind="cap")
        assert done == {"ok": "concurrency cap 'exports', every key: 3 slots from now on"}
        # `celery control` passes arguments by position: '' stands for every key.
        done = command(state, name="sms", value="500/d", burst=1, key="", kind="quota")
        assert done == {"ok": "quota 'sms', every key: 500/day from now on"}
        done = command(state, name="sms", value="9/week", key="+4411", kind="quota")
        assert done == {"ok": "quota 'sms', key '+4411': 9/week from now on"}
        assert [c.limit for c in client.caps("exports")] == [3]
        assert sorted((q.key or "", str(q)) for q in client.quotas("sms")) == [
            ("", "500/day"),
            ("+4411", "9/week"),
        ]
        assert client.limits("exports") == []
        assert "slot count" in command(state, name="exports", value="3/s", kind="cap")["error"]
        assert "burst" in command(state, name="exports", value="3", burst=2, kind="cap")["error"]
        assert "kind" in command(state, name="exports", value="3", kind="slots")["error"]
        assert "--kind cap" in command(state, name="exports", value="3")["error"]
        cleared = clear(state, name="exports", key="", kind="cap")
        assert cleared == {
            "ok": "concurrency cap 'exports', every key: back to its configured slot count"
        }
        assert client.caps("exports") == []
        assert clear(state, name="sms", key="+4411", kind="quota")["ok"]
        assert clear(state, name="sms", key="+4411", kind="quota") == {
            "error": "no allowance was set for 'sms', key '+4411'"
        }
        assert "kind" in clear(state, name="sms", kind="slots")["error"]


def test_breaker_command_forces_state_and_refuses_unknown_actions(client: taskguard.Client) -> None:
    breaker = client.circuit_breaker("partner")
    with celery_app(client.backend) as app:
        state = _state(app)
        done = Panel.data["taskguard_breaker"](state, action="open", name="partner")
        assert (done["before"], done["after"]) == ("closed", "forced_open")
        assert breaker.state == "forced_open"
        assert (
            Panel.data["taskguard_breaker"](state, action="reset", name="partner")["after"]
            == "closed"
        )
        assert (
            "action must be one of"
            in Panel.data["taskguard_breaker"](state, action="smash", name="x")["error"]
        )


def test_refresh_without_hot_path_breakers_refreshes_nothing(client: taskguard.Client) -> None:
    with celery_app(client.backend) as app:

        @app.task(
            shared=False,
            name="proj.call",
            base=GuardedTask,
            guards=[CircuitBreaker("partner-of-refresh-test")],
        )
        def call() -> None: ...

        done = Panel.data["taskguard_refresh"](_state(app))
    # On the memory backend there is no channel and no hot path: nothing to tell. (Other
    # tests of this process may leave hot-path breakers of their own: told names them.)
    assert [v for v in done["views"] if v["prefix"] == "unit-control"] == []
    assert "partner-of-refresh-test" not in done["told"]


def test_refresh_reports_the_breakers_it_could_not_tell() -> None:
    backend = taskguard.connect(DEAD_URL, prefix="unit-control-dead").backend
    with celery_app(backend) as app:

        @app.task(
            shared=False, name="proj.dead", base=GuardedTask, guards=[CircuitBreaker("dead-svc")]
        )
        def dead() -> None: ...

        done = Panel.data["taskguard_refresh"](_state(app))
    # (Hot-path breakers other tests of this process left behind may be listed too.)
    assert "dead-svc" not in done["told"]
    assert "unit-control-dead/dead-svc" in done["unreachable"]
    assert "could not tell [" in done["ok"]
    assert "'unit-control-dead/dead-svc'" in done["ok"]


def test_status_answers_while_redis_is_down() -> None:
    backend = taskguard.connect(DEAD_URL, prefix="unit-control-down").backend
    with celery_app(backend) as app:

        @app.task(shared=False, name="proj.down", base=GuardedTask, guards=[RateLimit("5/s")])
        def down() -> None: ...

        view = Panel.data["taskguard_status"](_state(app))
        limit_set = Panel.data["taskguard_limit_set"](_state(app), name="proj.down", rate="1/s")
    assert view["backend"]["reachable"] is False
    assert view["backend"]["outage_breaker"] in {"open", "half_open"}
    assert "error" in view["limits"]
    assert "error" in view["parked"]
    assert view["tasks"]["proj.down"]["guards"] == [repr(RateLimit("5/s", name="proj.down"))]
    assert "unavailable" in limit_set["error"]


def test_celery_control_passes_kind_and_key_by_position() -> None:
    from celery.bin.control import _compile_arguments

    arguments = _compile_arguments("taskguard_limit_set", ["exports", "3", "1", "", "cap"])
    assert arguments == {"name": "exports", "value": "3", "burst": 1, "key": "", "kind": "cap"}
    cleared = _compile_arguments("taskguard_limit_clear", ["sms", "+4411", "quota"])
    assert cleared == {"name": "sms", "key": "+4411", "kind": "quota"}
