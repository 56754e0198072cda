"""The cache and sessions without a Redis server: settings checks, and the Redis-down
fallbacks (reads from the store or the loader, writes straight to the store).

A cache takes a Redis backend; one on a port where nothing listens opens no connection
until asked, and then fails at once. The same services on a real Redis are in
tests/contract/test_cache_strategies.py and test_cache_sessions.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import taskguard
from taskguard.backend.base import Backend
from taskguard.cache import CacheService, Sessions
from taskguard.errors import ConfigurationError, StoreError
from taskguard.sinks import Loaded

from .celery_harness import DEAD_URL
from .test_cache_fakes import MemoryStore


@pytest.fixture
def dead_backend() -> Iterator[Backend]:
    # Nothing listens on port 1: every call fails at once with a connection error.
    backend = taskguard.connect(DEAD_URL, prefix="tgu").backend
    yield backend
    backend.close()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def wb(backend: Backend, store: MemoryStore, **options: Any) -> CacheService:
    return taskguard.connect(backend).cache(
        "orders", ttl=60, strategy="write-behind", store=store, **options
    )


# ---------------------------------------------------------------- cache


def test_redis_down_reads_fall_back_to_the_store_or_the_loader(
    dead_backend: Backend, store: MemoryStore
) -> None:
    store.rows["acct", "1"] = Loaded("from store", 1)
    cache = taskguard.connect(dead_backend).cache(
        "acct", ttl=60, strategy="write-through", store=store
    )
    assert cache.get("1") == "from store"
    assert cache.get_many(["1", "2"]) == {"1": "from store"}
    assert cache.get_or_load("3", lambda: "loaded") == "loaded"
    aside = taskguard.connect(dead_backend).cache("aside", ttl=60)
    assert aside.get("1", "default") == "default"
    with pytest.raises(taskguard.BackendUnavailable):
        aside.set("1", "x")


def test_redis_down_write_behind_writes_the_store_directly(
    dead_backend: Backend, store: MemoryStore
) -> None:
    cache = wb(dead_backend, store)  # registration is deferred, not an error
    cache.set("o1", "v1")
    cache.set_many({"o2": 2, "o3": 3})
    cache.delete("o3")
    assert store.rows["orders", "o1"].value == "v1"
    assert store.rows["orders", "o2"].value == 2
    assert store.rows["orders", "o3"].deleted
    store.fail = True
    with pytest.raises(StoreError):  # never dropped silently
        cache.set("o4", "v4")


# ---------------------------------------------------------------- sessions


def test_invalid_settings(dead_backend: Backend) -> None:
    backend = dead_backend
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


def test_redis_down_reads_the_store_copy() -> None:
    backend = taskguard.connect(DEAD_URL, prefix="tgu")  # nothing there
    store = MemoryStore()
    store.rows["sessions", "sid-1"] = Loaded({"data": {"u": 1}, "expires": 2e9}, 1)
    assert Sessions(backend, ttl=60, store=store, clock=lambda: 1e9).get("sid-1") == {"u": 1}
    with pytest.raises(taskguard.BackendUnavailable):
        taskguard.connect(backend).sessions(ttl=60).get("sid-1")
    backend.close()
