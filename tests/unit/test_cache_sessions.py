"""Sessions: secure ids, sliding expiry on a real Redis, and the optional store copy."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

import taskguard
from taskguard.backend.base import Backend
from taskguard.cache import Sessions
from taskguard.errors import ConfigurationError
from taskguard.sinks import Loaded

from .test_cache_fakes import MemoryStore


@pytest.fixture
def backend(redis_url: str, tg_prefix: str) -> Iterator[Backend]:
    backend = taskguard.connect(redis_url, prefix=tg_prefix).backend
    yield backend
    backend.close()


def pttl(sessions: Sessions, sid: str, client: Any) -> int:
    value: int = client.pttl(sessions._key(sid))
    return value


def test_new_get_set_destroy(backend: Backend) -> None:
    sessions = taskguard.connect(backend).sessions(ttl=60)
    sid = sessions.new({"user": 42})
    assert len(sid) >= 40
    assert sid != sessions.new()
    assert sessions.get(sid) == {"user": 42}
    sessions.set(sid, {"user": 42, "cart": [1]})
    assert sessions.get(sid) == {"user": 42, "cart": [1]}
    sessions.destroy(sid)
    assert sessions.get(sid) is None
    assert sessions.get(sid, {}) == {}
    assert sessions.touch(sid) is False
    assert sessions.get(sessions.new()) == {}


def test_get_and_touch_slide_the_expiry(backend: Backend, redis_client: Any) -> None:
    sessions = taskguard.connect(backend).sessions(ttl=10)
    sid = sessions.new({"a": 1})
    redis_client.pexpire(sessions._key(sid), 1_000)  # as if 9 s had passed
    assert sessions.get(sid) == {"a": 1}
    assert pttl(sessions, sid, redis_client) > 9_000
    redis_client.pexpire(sessions._key(sid), 1_000)
    assert sessions.touch(sid) is True
    assert pttl(sessions, sid, redis_client) > 9_000


def test_an_unused_session_expires(backend: Backend) -> None:
    sessions = taskguard.connect(backend).sessions(ttl=0.05)
    sid = sessions.new({"a": 1})
    time.sleep(0.2)
    assert sessions.get(sid) is None


def test_namespaces_keep_sessions_apart(backend: Backend) -> None:
    web, api = (
        taskguard.connect(backend).sessions(ttl=60),
        taskguard.connect(backend).sessions(ttl=60, namespace="api"),
    )
    sid = web.new({"a": 1})
    assert api.get(sid) is None


def test_invalid_settings(backend: Backend) -> None:
    with pytest.raises(ConfigurationError) as caught:
        taskguard.connect(backend).sessions(ttl=0)
    assert caught.value.field == "ttl"
    with pytest.raises(ConfigurationError) as caught:
        taskguard.connect(backend).sessions(ttl=5, namespace="a b")
    assert caught.value.field == "namespace"
    with pytest.raises(ConfigurationError) as caught:
        taskguard.connect(backend).sessions(ttl=5, codec="pickle")
    assert caught.value.field == "codec"
    with pytest.raises(ValueError, match="destroy"):
        taskguard.connect(backend).sessions(ttl=5).set("sid", None)


def test_a_store_copy_survives_redis_losing_the_session(
    backend: Backend, redis_client: Any
) -> None:
    now = [1_000.0]
    store = MemoryStore()
    sessions = Sessions(backend, ttl=60, store=store, clock=lambda: now[0])
    sid = sessions.new({"user": 7})
    redis_client.delete(sessions._key(sid))  # Redis lost it (restart without persistence)
    assert sessions.get(sid) == {"user": 7}
    assert 0 < pttl(sessions, sid, redis_client) <= 60_000
    redis_client.delete(sessions._key(sid))
    now[0] += 61  # the store copy's expiry (last set() + ttl) has passed
    assert sessions.get(sid) is None
    sessions.destroy(sid)
    assert store.rows["sessions", sid].deleted


def test_redis_down_reads_the_store_copy(tg_prefix: str) -> None:
    backend = taskguard.connect("redis://127.0.0.1:1/0", prefix=tg_prefix)  # nothing there
    store = MemoryStore()
    store.rows["sessions", "sid-1"] = Loaded({"data": {"u": 1}, "expires": 2e9}, 1)
    assert Sessions(backend, ttl=60, store=store, clock=lambda: 1e9).get("sid-1") == {"u": 1}
    with pytest.raises(taskguard.BackendUnavailable):
        taskguard.connect(backend).sessions(ttl=60).get("sid-1")
    backend.close()
