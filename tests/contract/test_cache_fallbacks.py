"""Write-behind fallbacks on a real Redis, with an in-memory store: a write that goes
straight to the store never leaves an older cached copy or queued write to be read, even
when dropping them fails; and a refused value queues nothing. The OOM and restart cases
(servers of their own) are in tests/integration/test_cache_fallbacks.py."""

from __future__ import annotations

from typing import Any

import pytest

import taskguard
from taskguard.backend.base import Backend
from taskguard.cache import CacheService
from taskguard.cache.records import partition_of, version_of
from taskguard.errors import BackendUnavailable, UnstorableValue
from tests.unit.test_cache_fakes import MemoryStore

from .harness import REDIS_ONLY, Contract

pytestmark = REDIS_ONLY


@pytest.fixture
def backend(contract: Contract) -> Backend:
    return contract.backend


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def wb(backend: Backend, store: MemoryStore, **options: Any) -> CacheService:
    return taskguard.connect(backend).cache(
        "orders", ttl=60, strategy="write-behind", store=store, **options
    )


def queued(cache: CacheService, key: str, client: Any) -> list[Any]:
    stream = cache.backend.keys.cache_stream(cache.namespace, partition_of(key, cache.partitions))
    return list(client.xrange(stream))


def dirty_id(cache: CacheService, key: str, client: Any) -> bytes | None:
    dirty = cache.backend.keys.cache_dirty(cache.namespace, partition_of(key, cache.partitions))
    found: bytes | None = client.hget(dirty, key)
    return found


class FailingSettles:
    """Makes the backend's port fail ``cache_wb_settle`` calls, as if Redis went away
    between the store write and the settle; every other call goes through."""

    def __init__(self, backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.failing = True
        for method in ("run_script", "run_script_many"):
            monkeypatch.setattr(backend, method, self._wrap(getattr(backend, method)))

    def _wrap(self, real: Any) -> Any:
        def call(name: str, *args: Any, **kwargs: Any) -> Any:
            if self.failing and name == "cache_wb_settle":
                raise BackendUnavailable("redis unreachable during cache settle (test)")
            return real(name, *args, **kwargs)

        return call


def test_full_queue_write_through_whose_settle_fails_reads_the_store(
    backend: Backend, store: MemoryStore, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = wb(backend, store, partitions=1, capacity=1)  # on_full="write_through"
    cache.set("a", "v1")  # queued and cached
    settles = FailingSettles(backend, monkeypatch)
    cache.set("a", "v2")  # queue full: v2 goes to the store; dropping v1's copy fails
    assert store.rows["orders", "a"].value == "v2"
    assert redis_client.get(cache._ops.value_key("a")) is not None  # v1 is still cached
    assert cache.get("a") == "v2"  # not v1: this process reads the store for "a"
    assert cache.get_many(["a"]) == {"a": "v2"}
    assert cache.get_or_load("a", lambda: "loaded") == "loaded"  # not the cached v1
    settles.failing = False
    assert cache.get("a") == "v2"  # the pending settle ran first: v1's copy went...
    assert dirty_id(cache, "a", redis_client) is None
    assert redis_client.get(cache._ops.value_key("a")) == b'=0:"v2"'  # ...v2 came from the store
    other = wb(backend, store, partitions=1, capacity=1)  # another process
    assert other.get("a") == "v2"


def test_a_settle_keeps_a_write_queued_after_the_direct_write(
    backend: Backend, store: MemoryStore, redis_client: Any
) -> None:
    cache = wb(backend, store, partitions=1)
    cache.set("a", "v1")
    [(queued_id, _)] = queued(cache, "a", redis_client)
    # A direct write older than the queued one (as a slow clock would make it): kept.
    assert not cache._ops.settle("a", version_of(queued_id) - 1)
    assert dirty_id(cache, "a", redis_client) == queued_id
    assert cache.get("a") == "v1"
    # A direct write newer than it: the copy and the mark go, reads fall to the store.
    assert cache._ops.settle("a", version_of(queued_id) + 1)
    assert dirty_id(cache, "a", redis_client) is None
    assert redis_client.get(cache._ops.value_key("a")) is None


@pytest.mark.parametrize("value", [float("nan"), (1, 2), {1: "a"}])
def test_a_refused_value_queues_nothing(
    backend: Backend, store: MemoryStore, redis_client: Any, value: Any
) -> None:
    cache = wb(backend, store, partitions=1)
    cache.set("a", "v1")
    with pytest.raises(UnstorableValue):
        cache.set("a", value)
    with pytest.raises(UnstorableValue):
        cache.set_many({"b": 1, "a": value})
    assert [f[b"k"] for _, f in queued(cache, "a", redis_client)] == [b"a"]
    assert cache.get("a") == "v1"
    assert cache.get("b") is None
