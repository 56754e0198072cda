"""Sessions: secure ids, sliding expiry on a real Redis, and the optional store copy.

Sessions need Redis: these run on the contract's Redis only. Their settings checks and the
Redis-down path are in tests/unit/test_cache_offline.py."""

from __future__ import annotations

from typing import Any

import pytest

import taskguard
from taskguard.backend.base import Backend
from taskguard.cache import Sessions
from tests.unit.test_cache_fakes import MemoryStore

from .harness import REDIS_ONLY, Contract

pytestmark = REDIS_ONLY


@pytest.fixture
def backend(contract: Contract) -> Backend:
    return contract.backend


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


def test_an_unused_session_expires(backend: Backend, contract: Contract) -> None:
    sessions = taskguard.connect(backend).sessions(ttl=0.05)
    sid = sessions.new({"a": 1})
    contract.elapse(0.2)  # unused for four TTLs (polling get() would keep it alive)
    assert sessions.get(sid) is None


def test_namespaces_keep_sessions_apart(backend: Backend) -> None:
    web, api = (
        taskguard.connect(backend).sessions(ttl=60),
        taskguard.connect(backend).sessions(ttl=60, namespace="api"),
    )
    sid = web.new({"a": 1})
    assert api.get(sid) is None


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
