"""Sentry spans of the cache and the drain pool, on the contract's Redis (both need
Redis), with a real ``sentry_sdk.init`` and a recording transport. Task spans are in
tests/unit/test_sentry.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk

import taskguard
from taskguard.backend.base import Backend
from taskguard.drain import DrainPool
from taskguard.sentry import TaskguardIntegration
from tests.sentry_transport import recording, spans, transactions
from tests.unit.test_cache_fakes import MemoryStore

from .harness import REDIS_ONLY, Contract

pytestmark = REDIS_ONLY


@pytest.fixture
def backend(contract: Contract) -> Backend:
    return contract.backend


@pytest.fixture
def recorded() -> Iterator[list[dict[str, Any]]]:
    with recording(TaskguardIntegration()) as envelopes:
        yield envelopes


def test_cache_reads_and_writes_are_caches_module_spans(
    backend: Backend, recorded: list[dict[str, Any]]
) -> None:
    users = taskguard.connect(backend).cache("users", ttl=60)
    with sentry_sdk.start_transaction(op="task", name="cache"):
        assert users.get("42") is None
        users.set("42", {"name": "Ada"})
        assert users.get("42") == {"name": "Ada"}
        assert users.get_many(["42", "43"]) == {"42": {"name": "Ada"}}
    sentry_sdk.flush()
    miss, hit, many = spans(recorded, "cache.get")
    assert (miss["description"], miss["data"]["cache.key"]) == ("42", ["42"])
    assert miss["data"]["cache.hit"] is False
    assert miss["data"]["cache.item_size"] == 0
    assert hit["data"]["cache.hit"] is True
    assert hit["data"]["cache.item_size"] > len('{"name":"Ada"}')
    assert many["data"]["cache.key"] == ["42", "43"]
    assert many["data"]["cache.hit"] is True
    (put,) = spans(recorded, "cache.put")
    assert put["data"]["cache.key"] == ["42"]
    assert put["data"]["cache.item_size"] == hit["data"]["cache.item_size"]
    assert put["data"]["taskguard.namespace"] == "users"
    assert put["origin"] == "auto.taskguard"


def test_a_drain_batch_is_a_transaction_of_its_own(
    backend: Backend, recorded: list[dict[str, Any]]
) -> None:
    store = MemoryStore()
    orders = taskguard.connect(backend).cache(
        "orders", ttl=60, strategy="write-behind", store=store, partitions=1
    )
    with sentry_sdk.start_transaction(op="task", name="writer"):
        orders.set_many({"1": "a", "2": "b"})
        orders.set("1", "c")
    with DrainPool(backend, store, workers=1, linger=0.0) as pool:
        assert pool.wait_idle(10)
    sentry_sdk.flush()
    puts = spans(recorded, "cache.put")
    assert [p["data"]["cache.key"] for p in puts] == [["1", "2"], ["1"]]
    batches = [
        t for t in transactions(recorded) if t["contexts"]["trace"]["op"] == "taskguard.drain.batch"
    ]
    assert batches, [t["contexts"]["trace"]["op"] for t in transactions(recorded)]
    data = [b["contexts"]["trace"]["data"] for b in batches]
    assert sum(d["taskguard.records"] for d in data) == 3
    assert sum(d["taskguard.rows"] for d in data) == 2
    assert {d["taskguard.namespace"] for d in data} == {"orders"}
    assert batches[0]["transaction"] == "drain orders"
