"""Cache settings that reach Redis: a write-behind namespace registers its partition
count, a msgpack namespace reads back what it wrote, and cached copies expire within the
jittered TTL. The cache needs Redis: these run on the contract's Redis only; the settings
checks that need no server are in tests/unit/test_cache_config.py."""

from __future__ import annotations

import random
from typing import Any

import pytest

import taskguard
from taskguard.backend.base import Backend
from taskguard.errors import ConfigurationError
from tests.unit.test_cache_fakes import MemoryStore

from .harness import REDIS_ONLY, Contract

pytestmark = REDIS_ONLY


@pytest.fixture
def backend(contract: Contract) -> Backend:
    return contract.backend


def test_write_behind_namespaces_register_their_partition_count(
    backend: Backend, redis_client: Any
) -> None:
    store = MemoryStore()
    taskguard.connect(backend).cache(
        "orders", ttl=60, strategy="write-behind", store=store, partitions=4
    )
    where = backend.keys.write_behind_namespaces()
    assert redis_client.hget(where, "orders") == b"4"
    taskguard.connect(backend).cache(
        "orders", ttl=60, strategy="write-behind", store=store, partitions=4
    )
    with pytest.raises(ConfigurationError, match="registered with 4 partitions") as caught:
        taskguard.connect(backend).cache(
            "orders", ttl=60, strategy="write-behind", store=store, partitions=8
        )
    assert caught.value.field == "partitions"
    taskguard.connect(backend).cache("plain", ttl=60, store=store)  # cache-aside does not register
    assert redis_client.hget(where, "plain") is None


def test_msgpack_namespace_reads_back_what_it_wrote(backend: Backend) -> None:
    cache = taskguard.connect(backend).cache("packed", ttl=60, codec="msgpack")
    cache.set("k", {"bytes": b"\x00\x01", "n": 3})
    assert cache.get("k") == {"bytes": b"\x00\x01", "n": 3}


def test_ttl_jitter_stays_within_bounds(backend: Backend, redis_client: Any) -> None:
    cache = taskguard.connect(backend).cache("jit", ttl=10, jitter=0.2, rng=random.Random(7))
    draws = [cache.ttl_ms() for _ in range(2000)]
    assert min(draws) >= 10_000
    assert max(draws) <= 12_000
    assert max(draws) - min(draws) > 1_000  # it does vary
    assert {cache.ttl_ms(negative=True) // 1000 for _ in range(50)} <= {10, 11}  # min(ttl, 30)
    flat = taskguard.connect(backend).cache("flat", ttl=10, jitter=0)
    assert {flat.ttl_ms() for _ in range(20)} == {10_000}
    cache.set("k", 1)
    assert 9_000 < redis_client.pttl(cache._ops.value_key("k")) <= 12_000
