"""What ``set()`` refuses up front: values the codec cannot read back equal, values and
keys the store cannot hold (``Store.check``), and the bounds on namespaces and partitions.
Also: cache outage warnings are rate-limited. No server: the backend's Redis is dead, so
a write-behind ``set`` that got past the checks would go straight to the store."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import pytest

import taskguard
from taskguard.backend.base import Backend
from taskguard.cache import CacheService, outage
from taskguard.cache.config import MAX_NAMESPACE_LENGTH
from taskguard.cache.records import MAX_PARTITIONS
from taskguard.clock import FakeClock
from taskguard.errors import ConfigurationError, UnstorableValue
from taskguard.sinks import Record, check_record
from taskguard.sinks.base import JSONText
from taskguard.sinks.sql import SQLStore

from .celery_harness import DEAD_URL
from .test_cache_fakes import MemoryStore


@pytest.fixture
def dead_backend() -> Iterator[Backend]:
    backend = taskguard.connect(DEAD_URL, prefix="tgu").backend
    yield backend
    backend.close()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def cache(backend: Backend, store: Any, strategy: str = "write-behind", **options: Any) -> Any:
    return taskguard.connect(backend).cache(
        "orders", ttl=60, strategy=strategy, store=store, **options
    )


# ---------------------------------------------------------------- the codec round trip


@pytest.mark.parametrize("codec", ["json", "msgpack"])
@pytest.mark.parametrize(
    ("value", "where"),
    [
        ((1, 2), "value"),
        ({"pos": (1, 2)}, "value['pos']"),
        ({1: "a"}, "value"),
        ({"a": [1, {2: "b"}]}, "value['a'][1]"),
        (float("nan"), "value"),
        ({"x": [1.5, float("nan")]}, "value['x'][1]"),
    ],
)
def test_a_value_that_would_not_read_back_equal_is_refused(
    dead_backend: Backend, store: MemoryStore, codec: str, value: Any, where: str
) -> None:
    orders = cache(dead_backend, store, codec=codec)
    with pytest.raises(UnstorableValue) as caught:
        orders.set("k1", value)
    error = caught.value
    assert (error.namespace, error.key, error.field) == ("orders", "k1", where)
    assert "k1" in str(error)
    assert where in str(error)
    assert isinstance(error, ValueError)
    assert store.writes == []  # refused before anything was written


@pytest.mark.parametrize("strategy", ["cache-aside", "write-through", "write-around"])
def test_every_strategy_refuses_before_writing(
    dead_backend: Backend, store: MemoryStore, strategy: str
) -> None:
    orders = cache(dead_backend, store, strategy=strategy)
    with pytest.raises(UnstorableValue):
        orders.set_many({"ok": 1, "bad": (1, 2)})
    assert store.writes == []  # not even the good item: the batch is checked first


def test_a_value_the_codec_cannot_encode_is_refused_as_a_type_error(
    dead_backend: Backend, store: MemoryStore
) -> None:
    orders = cache(dead_backend, store)
    with pytest.raises(TypeError) as caught:
        orders.set("k", {"when": object()})
    assert isinstance(caught.value, UnstorableValue)
    assert store.writes == []


@pytest.mark.parametrize("value", [{"a": [1, 2.5, "é", None, True]}, "text", 0, -0.0, [1, "1"]])
def test_values_that_round_trip_are_accepted(
    dead_backend: Backend, store: MemoryStore, value: Any
) -> None:
    orders = cache(dead_backend, store)
    orders.set("k", value)  # Redis is down: it goes straight to the store
    assert store.rows["orders", "k"].value == value


# ---------------------------------------------------------------- what the store can hold


def test_the_sql_store_refuses_what_the_database_cannot_hold() -> None:
    postgres = SQLStore("postgresql://postgres@127.0.0.1:1/none")  # never connects here
    sqlite = SQLStore("sqlite://")
    try:
        for store in (postgres, sqlite):
            for value in (float("nan"), float("inf"), {"a": [float("-inf")]}):
                with pytest.raises(UnstorableValue, match="JSON"):
                    store.check("ns", Record("k", value, 0))
            store.check("ns", Record("k", {"a": [1, "x"]}, 0))
            store.check("ns", Record("k", None, 0, deleted=True))
        for record in (
            Record("k", "a\x00b", 0),
            Record("k", {"a\x00": 1}, 0),
            Record("a\x00b", 1, 0),
            Record("k" * (postgres.max_key_bytes + 1), 1, 0),
            Record("é" * (postgres.max_key_bytes // 2 + 1), 1, 0),  # bytes, not characters
        ):
            with pytest.raises(UnstorableValue) as caught:
                postgres.check("ns", record)
            assert caught.value.key == record.key
            sqlite.check("ns", record)  # SQLite holds NUL characters and long keys
        postgres.check("ns", Record("k" * postgres.max_key_bytes, 1, 0))
        # Not a NUL character: the six characters backslash, u, 0, 0, 0, 0.
        postgres.check("ns", Record("k", "\\u0000", 0))
    finally:
        postgres.close()
        sqlite.close()


def test_the_sql_store_checks_json_text_without_decoding_it_when_it_can() -> None:
    postgres = SQLStore("postgresql://postgres@127.0.0.1:1/none")
    try:
        for text in ('{"a":"NaN and Infinity are fine in a string"}', '"\\\\u0000"', "[1,2]"):
            postgres.check("ns", Record("k", JSONText(text), 0))
        for text, where in (("[1,Infinity]", "value[1]"), ('{"s":"a\\u0000b"}', "value['s']")):
            with pytest.raises(UnstorableValue) as caught:
                postgres.check("ns", Record("k", JSONText(text), 0))
            assert caught.value.field == where
    finally:
        postgres.close()


def test_a_store_without_check_accepts_everything() -> None:
    check_record(MemoryStore(), "ns", Record("k", float("inf"), 0))


@pytest.mark.parametrize("strategy", ["write-behind", "write-through", "write-around"])
@pytest.mark.parametrize(
    ("key", "value"),
    [("k", float("inf")), ("k", {"a": [float("-inf")]}), ("k", "a\x00b"), ("a\x00b", 1)],
)
def test_set_refuses_what_the_store_cannot_hold(
    dead_backend: Backend, strategy: str, key: str, value: Any
) -> None:
    store = SQLStore("postgresql://postgres@127.0.0.1:1/none")
    try:
        orders = cache(dead_backend, store, strategy=strategy)
        with pytest.raises(UnstorableValue) as caught:
            orders.set(key, value)  # refused before the (unreachable) database is tried
        assert caught.value.key == key
        with pytest.raises(UnstorableValue):
            orders.set_many({"fine": 1, key: value})
    finally:
        store.close()


def test_delete_refuses_a_key_the_store_cannot_hold(dead_backend: Backend) -> None:
    store = SQLStore("postgresql://postgres@127.0.0.1:1/none")
    try:
        with pytest.raises(UnstorableValue):
            cache(dead_backend, store).delete("x" * 3000)
    finally:
        store.close()


def test_cache_aside_with_a_store_does_not_ask_the_store(
    dead_backend: Backend, store: MemoryStore
) -> None:
    postgres = SQLStore("postgresql://postgres@127.0.0.1:1/none")
    try:
        aside = cache(dead_backend, postgres, strategy="cache-aside")
        with pytest.raises(taskguard.BackendUnavailable):  # checked, then Redis is down
            aside.set("a\x00b", math.pi)
    finally:
        postgres.close()


# ---------------------------------------------------------------- bounds


def test_partitions_are_bounded(dead_backend: Backend, store: MemoryStore) -> None:
    assert cache(dead_backend, store, partitions=MAX_PARTITIONS).partitions == MAX_PARTITIONS
    for partitions in (MAX_PARTITIONS + 1, 10**9):
        with pytest.raises(ConfigurationError, match=str(MAX_PARTITIONS)) as caught:
            cache(dead_backend, store, partitions=partitions)
        assert caught.value.field == "partitions"


def test_namespaces_are_bounded(dead_backend: Backend) -> None:
    client = taskguard.connect(dead_backend)
    assert client.cache("n" * MAX_NAMESPACE_LENGTH, ttl=60).namespace == "n" * 64
    for make in (
        lambda name: client.cache(name, ttl=60),
        lambda name: client.sessions(ttl=60, namespace=name),
    ):
        with pytest.raises(ConfigurationError, match="64") as caught:
            make("n" * 200)
        assert caught.value.field == "namespace"


def test_drain_settings_check_namespace_names() -> None:
    from taskguard.drain import DrainSettings

    for bad in ("n" * 200, "a b", "a:b"):
        with pytest.raises(ConfigurationError) as caught:
            DrainSettings.from_mapping({"namespaces": [bad]})
        assert caught.value.field == "drain.namespaces"


# ---------------------------------------------------------------- outage warnings


def test_outage_warnings_are_rate_limited(
    dead_backend: Backend,
    store: MemoryStore,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(outage, "THROTTLE", outage.Throttle(every=5.0, clock=clock.time))
    orders: CacheService = cache(dead_backend, store, strategy="write-through")
    store.write("orders", [Record("k", "v", 1)])
    with caplog.at_level(logging.WARNING, logger="taskguard.cache"):
        for _ in range(50):
            assert orders.get("k") == "v"
            assert orders.get_many(["k"]) == {"k": "v"}
        clock.advance(5.0)
        assert orders.get("k") == "v"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "Redis unavailable" in warnings[0]
    assert "99 more like it" in warnings[1]
