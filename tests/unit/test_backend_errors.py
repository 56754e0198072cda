"""Which Redis errors are outages, without a server: a RedisBackend on a fake client that
answers every call with a given redis-py error (as the driver builds it from the reply).

Only connection loss, timeouts, LOADING and READONLY/failover are outages (the outage
policies decide, the outage breaker opens); OOM and MISCONF go through the policies too,
without the breaker; anything else (NOPERM, WRONGPASS, a script error...) is a
BackendError that names the guards and fails the task. The same checks against a real
Redis with real ACL users are in tests/contract/test_acl.py.
"""

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from redis._parsers import BaseParser

import taskguard
from taskguard import BackendError, BackendUnavailable, GuardedTask, RateLimit
from taskguard.backend.acl import acl_rules
from taskguard.backend.ops import Held, LeaseOp, Op
from taskguard.backend.redis_errors import classify
from taskguard.clock import FakeClock
from taskguard.guards import admission
from taskguard.guards.admission import admit
from taskguard.guards.lock import Lock
from taskguard.heartbeat import Heartbeat
from taskguard.testing import wait_until

from .celery_harness import celery_app, run_as_worker

SECRET = "hunter2-s3cret"
URL = f"redis://app:{SECRET}@cache.internal:6379/0"


def reply(text: str) -> redis.RedisError:
    """The exception redis-py raises for the error reply ``text``."""
    return BaseParser.parse_error(text)


class FakeRedis:
    """Answers every script call with ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.connection_pool = self

    def evalsha(self, *args: Any) -> Any:
        raise self.error

    def script_load(self, source: str) -> str:
        raise self.error

    def ping(self) -> bool:
        raise self.error

    def reset(self) -> None: ...

    def close(self) -> None: ...


def failing(error: BaseException) -> taskguard.RedisBackend:
    return taskguard.RedisBackend(URL, client=FakeRedis(error))  # type: ignore[arg-type]


SCRIPT_ERROR_7 = (
    "ERR user_script:1: attempt to perform arithmetic on local 'a' (a nil value) "
    "script: 89b7d8273642b86be5c7a8f7f404432e80c342ed, on @user_script:1."
)
SCRIPT_ERROR_62 = (
    "ERR Error running script (call to f_89b7d8273642b86be5c7a8f7f404432e80c342ed): "
    "@user_script:1: user_script:1: attempt to perform arithmetic on local 'a'"
)
INNER_62 = "ERR Error running script (call to f_897a): @user_script:1: @user_script: 1: -{}"

OOM = "OOM command not allowed when used memory > 'maxmemory'."
READONLY = "READONLY You can't write against a read only replica."
MISCONF = "MISCONF Redis is configured to save RDB snapshots, but it's unable to persist to disk."

#: Error replies: (the reply, the exception taskguard raises, its code, breaker opens).
REPLIES = [
    # not outages: they fail loudly
    ("NOPERM this user has no permissions to run the 'evalsha' command", "error", "NOPERM"),
    ("NOPERM this user has no permissions to access one of the keys used", "error", "NOPERM"),
    ("WRONGPASS invalid username-password pair or user is disabled.", "error", "WRONGPASS"),
    ("NOAUTH Authentication required.", "error", "NOAUTH"),
    (SCRIPT_ERROR_7, "error", "ERR"),
    (SCRIPT_ERROR_62, "error", "ERR"),
    ("ERR Error running script (call to f_fd1f): @user_script:1: WRONGTYPE Operation against",
     "error", "WRONGTYPE"),
    ("ERR value is not an integer or out of range script: ff1d, on @x:62.", "error", "ERR"),
    ("ERR The user executing the script can't access at least one of the keys", "error", "ERR"),
    ("WRONGTYPE Operation against a key holding the wrong kind of value", "error", "WRONGTYPE"),
    ("ERR unknown command 'EVALSHA', with args beginning with: ", "error", "ERR"),
    ("CROSSSLOT Keys in request don't hash to the same slot", "error", "CROSSSLOT"),
    # outages: the policies decide, the outage breaker opens
    ("ERR max number of clients reached", "outage", None),
    ("LOADING Redis is loading the dataset in memory", "outage", "LOADING"),
    (READONLY, "outage", "READONLY"),
    (INNER_62.format(READONLY), "outage", "READONLY"),
    ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is 'no'.", "outage",
     "MASTERDOWN"),
    ("TRYAGAIN Multiple keys request during rehashing of slot", "outage", "TRYAGAIN"),
    ("CLUSTERDOWN The cluster is down", "outage", "CLUSTERDOWN"),
    ("BUSY Redis is busy running a script. You can only call SCRIPT KILL.", "outage", "BUSY"),
    ("NOREPLICAS Not enough good replicas to write.", "outage", "NOREPLICAS"),
    # refused writes: the policies decide, the breaker stays closed
    (OOM, "refused", "OOM"),
    (f"{OOM} script: 897a, on @user_script:1.", "refused", "OOM"),
    (INNER_62.format(OOM), "refused", "OOM"),
    (MISCONF, "refused", "MISCONF"),
]  # fmt: skip
#: Errors redis-py raises itself: (the error, kind, code).
RAISED: list[tuple[BaseException, str, str | None]] = [
    (redis.exceptions.ConnectionError("Error 111 connecting to cache:6379."), "outage", None),
    (redis.exceptions.TimeoutError("Timeout reading from socket"), "outage", None),
    (ConnectionResetError(104, "Connection reset by peer"), "outage", None),
    (redis.exceptions.DataError("Invalid input of type: 'dict'."), "error", None),
    (redis.exceptions.InvalidResponse("Protocol Error: H, b'TTP/1.1'"), "error", None),
]  # fmt: skip
RAISES = {"error": BackendError, "outage": BackendUnavailable, "refused": BackendUnavailable}
CASES = [(reply(text), kind, code) for text, kind, code in REPLIES] + RAISED


@pytest.mark.parametrize(("error", "kind", "code"), CASES, ids=lambda v: str(v)[:40])
def test_only_outages_are_backend_unavailable(
    error: BaseException, kind: str, code: str | None
) -> None:
    raised, opens = RAISES[kind], kind == "outage"
    backend = failing(error)
    op = RateLimit("1/s", name="api").op(backend.keys)
    with pytest.raises(raised) as info:
        backend.admit([op])
    assert type(info.value) is raised
    assert info.value.code == code  # type: ignore[attr-defined]
    assert info.value.__cause__ is error
    assert backend.breaker.is_open is opens
    if opens:
        assert info.value.retry_after == pytest.approx(0.5)  # type: ignore[attr-defined]
    # the plain-command port sorts errors the same way
    plain = failing(error)
    with pytest.raises(raised), plain.commands("GET"):
        raise error
    assert plain.breaker.is_open is opens


def test_refused_writes_are_recognisable_for_the_caches_fallback() -> None:
    backend = failing(reply("OOM command not allowed when used memory > 'maxmemory'."))
    with pytest.raises(BackendUnavailable) as info:
        backend.admit([RateLimit("1/s", name="api").op(backend.keys)])
    assert info.value.refuses_writes
    assert "redis refuses writes during admission: OOM command not allowed" in str(info.value)


def test_the_error_text_names_the_code_and_the_operation() -> None:
    backend = failing(reply("NOPERM this user has no permissions to run the 'evalsha' command"))
    with pytest.raises(BackendError) as info:
        backend.run_script("renew", [], [0], what="lease renewal")
    assert str(info.value) == (
        "redis error during lease renewal: NOPERM this user has no permissions to run the "
        "'evalsha' command"
    )
    assert info.value.what == "lease renewal"


def test_a_password_quoted_in_an_error_text_is_masked() -> None:
    backend = failing(redis.exceptions.ConnectionError(f"AUTH app {SECRET} refused by cache"))
    with pytest.raises(BackendUnavailable) as info:
        backend.ping()
    assert SECRET not in str(info.value)
    assert "AUTH app *** refused by cache" in str(info.value)


def test_classify_keeps_the_code_in_the_text() -> None:
    found = classify(reply("NOPERM this user has no permissions to run the 'evalsha' command"))
    assert found.text == "NOPERM this user has no permissions to run the 'evalsha' command"
    assert classify(reply("WRONGTYPE Operation against a key")).text.startswith("WRONGTYPE ")


# ---------------------------------------------------------------- admission: the guards


NOPERM = "NOPERM this user has no permissions to run the 'evalsha' command"


@pytest.mark.parametrize("policy", ["allow", "deny", "local"])
def test_no_outage_policy_admits_through_a_permission_error(policy: str) -> None:
    backend = failing(reply(NOPERM))
    spec = RateLimit("10/s", name="api", on_outage=policy)
    with pytest.raises(BackendError) as info:
        admit(backend, [spec], [spec.op(backend.keys)])
    assert info.value.guards == (repr(spec),)
    assert repr(spec) in str(info.value)
    assert info.value.code == "NOPERM"
    assert isinstance(info.value.__cause__, redis.exceptions.NoPermissionError)


def test_a_script_error_is_never_admitted_silently() -> None:
    # What a rate too slow for the script's integers did on every call (issue 11, #2).
    backend = failing(reply("ERR value is not an integer or out of range script: ff, on @x:62."))
    limiter = taskguard.connect(backend).rate_limiter("slow", "1/d")  # on_outage="allow"
    with pytest.raises(BackendError, match="not an integer"):
        limiter.try_acquire()


def test_oom_goes_through_the_policy_with_its_own_log_line(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admission, "_last_logged", {})  # logged once per 10 s per process
    caplog.set_level(logging.WARNING, logger="taskguard.admission")
    backend = failing(reply("OOM command not allowed when used memory > 'maxmemory'."))
    allow = RateLimit("10/s", name="oom-allow")
    outcome = admit(backend, [allow], [allow.op(backend.keys)])
    assert outcome.admission.allowed
    assert outcome.degraded
    deny = RateLimit("10/s", name="oom-deny", on_outage="deny")
    assert not admit(backend, [deny], [deny.op(backend.keys)]).admission.allowed
    assert not backend.breaker.is_open
    assert any(
        r.levelno == logging.ERROR and "Redis refuses writes (OOM)" in r.getMessage()
        for r in caplog.records
    )


# ---------------------------------------------------------------- a task fails, the worker goes on


def test_a_task_whose_guard_fails_loudly_fails_with_the_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = failing(reply(NOPERM))
    runs = []
    with celery_app(backend) as app:
        spec = RateLimit("10/s")  # on_outage="allow": an outage would run it unguarded

        @app.task(shared=False, base=GuardedTask, guards=[spec])
        def guarded() -> str:
            runs.append(1)
            return "ran"

        with pytest.raises(BackendError) as info:
            run_as_worker(guarded)
        # eagerly too (task.apply): the result holds the error, nothing is raised
        result = guarded.apply()
    assert not runs
    assert info.value.code == "NOPERM"
    assert "RateLimit('10/s'" in str(info.value)  # the guard, as bound to the task
    assert isinstance(result.result, BackendError)
    [line] = [r for r in caplog.records if "cannot check guard(s)" in r.getMessage()][:1]
    assert line.levelno == logging.ERROR
    assert guarded.name in line.getMessage()
    assert "RateLimit('10/s'" in line.getMessage()
    assert "NOPERM" in line.getMessage()


def test_publish_time_uniqueness_does_not_publish_through_a_permission_error() -> None:
    backend = failing(reply(NOPERM))
    with celery_app(backend) as app:
        lock = Lock(mode="until_executed", on_outage="allow")

        @app.task(shared=False, base=GuardedTask, guards=[lock])
        def unique() -> None: ...

        with pytest.raises(BackendError) as info:
            unique.delay()
    assert "Lock(mode='until_executed'" in str(info.value)


class RefusingBackend(taskguard.MemoryBackend):
    """Admits like memory; refuses releases and renewals like a Redis with a bad ACL."""

    def _refuse(self, what: str) -> BackendError:
        return BackendError(f"redis error during {what}: {NOPERM}", code="NOPERM", what=what)

    def release(self, ops: Sequence[Held]) -> list[int]:
        raise self._refuse("release")

    def renew(self, ops: Sequence[Held]) -> list[bool]:
        raise self._refuse("renewal")

    def admit(self, ops: Sequence[Op], *, reserve_within: float = 0.0) -> Any:
        return super().admit(ops, reserve_within=reserve_within)


def test_a_refused_release_is_logged_and_never_changes_the_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = RefusingBackend(clock=FakeClock())
    with celery_app(backend) as app:

        @app.task(shared=False, base=GuardedTask, guards=[Lock(ttl=30)])
        def locked() -> str:
            return "done"

        assert run_as_worker(locked) == "done"
    [line] = [r for r in caplog.records if "could not release" in r.getMessage()]
    assert line.levelno == logging.ERROR
    assert "NOPERM" in line.getMessage()
    assert "Lock(" in line.getMessage()


def test_the_heartbeat_survives_a_refused_renewal(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="taskguard.heartbeat")
    heartbeat = Heartbeat(RefusingBackend(clock=FakeClock()))
    heartbeat.add(LeaseOp("tg:{tg}:lock:x", owner="me", ttl=0.3))  # a round every 0.1 s

    def failures() -> int:
        return sum("leases expire by TTL" in r.getMessage() for r in caplog.records)

    try:
        wait_until(lambda: failures() >= 2, timeout=10)  # it kept trying after the first
        assert heartbeat._thread is not None
        assert heartbeat._thread.is_alive()
        assert all(r.levelno == logging.ERROR for r in caplog.records)
    finally:
        heartbeat.stop()


def test_the_acl_probe_tries_every_command_the_scripts_call() -> None:
    scripts = Path(taskguard.backend.__file__).parent / "scripts"
    called = {
        name.upper()
        for path in scripts.rglob("*.lua")
        if path.name != "acl_probe.lua"
        for name in re.findall(r"redis\.p?call\(\s*['\"](\w+)['\"]", path.read_text())
    }
    probe = (scripts / "acl_probe.lua").read_text()
    tried = {name.upper() for name in re.findall(r"try\('(\w+)'", probe)}
    assert called
    assert called <= tried, called - tried


def test_the_documented_acl_line_is_the_one_checked() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "security.md").read_text()
    line = f"ACL SETUSER taskguard reset on >CHANGE-ME {' '.join(acl_rules('tg'))}"
    assert line in docs


def test_the_breaker_agent_logs_a_refused_flush_once_per_breaker_and_10_s(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from taskguard.guards.breaker_agent import _Agent

    agent = _Agent.__new__(_Agent)  # no thread: only its log throttle is under test
    agent._logged = {}
    refused = BackendError("redis error during breaker flush: NOPERM no", code="NOPERM")
    for now in (100.0, 100.05, 105.0, 109.9):
        agent._refused("partner", refused, now)
    agent._refused("other", refused, 100.1)
    agent._refused("partner", refused, 110.0)
    lines = [r.getMessage() for r in caplog.records if "flush failed" in r.getMessage()]
    assert lines == [
        f"circuit 'partner': flush failed: {refused}",
        f"circuit 'other': flush failed: {refused}",
        f"circuit 'partner': flush failed: {refused}",
    ]
