"""Cache settings are validated (errors name the field); codecs, cached-copy format,
TTL jitter bounds, and the XFetch decision with a fixed random number."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

import taskguard
from taskguard.backend.base import Backend
from taskguard.cache import should_refresh_early
from taskguard.cache.codec import get_codec
from taskguard.cache.entry import decode, encode
from taskguard.errors import ConfigurationError

from .celery_harness import DEAD_URL


@pytest.fixture
def backend() -> Iterator[Backend]:
    # A cache takes a Redis backend; checking its settings opens no connection.
    backend = taskguard.connect(DEAD_URL, prefix="tgu").backend
    yield backend
    backend.close()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"ttl": None}, "ttl"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": -5}, "ttl"),
        ({"ttl": "60"}, "ttl"),
        ({"ttl": 60, "strategy": "read-through"}, "strategy"),
        ({"ttl": 60, "strategy": "write-through"}, "store"),
        ({"ttl": 60, "strategy": "write-around"}, "store"),
        ({"ttl": 60, "strategy": "write-behind"}, "store"),
        ({"ttl": 60, "store": object()}, "store"),
        ({"ttl": 60, "codec": "pickle"}, "codec"),
        ({"ttl": 60, "codec": "yaml"}, "codec"),
        ({"ttl": 60, "partitions": 0}, "partitions"),
        ({"ttl": 60, "partitions": 2.5}, "partitions"),
        ({"ttl": 60, "jitter": -0.1}, "jitter"),
        ({"ttl": 60, "jitter": 1.5}, "jitter"),
        ({"ttl": 60, "negative_ttl": -1}, "negative_ttl"),
        ({"ttl": 60, "capacity": 0}, "capacity"),
        ({"ttl": 60, "on_full": "drop"}, "on_full"),
        ({"ttl": 60, "block_timeout": -1}, "block_timeout"),
        ({"ttl": 60, "early_refresh": -1}, "early_refresh"),
        ({"ttl": 60, "flight_ttl": 0}, "flight_ttl"),
    ],
)
def test_invalid_settings_name_their_field(
    backend: Backend, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        taskguard.connect(backend).cache("users", **options)
    assert caught.value.field == field


@pytest.mark.parametrize("namespace", ["", "a b", "a:b", "a{b}", "ü", 7])
def test_namespace_must_be_simple(backend: Backend, namespace: Any) -> None:
    with pytest.raises(ConfigurationError) as caught:
        taskguard.connect(backend).cache(namespace, ttl=60)
    assert caught.value.field == "namespace"


def test_ttl_takes_a_timedelta_and_negative_ttl_defaults_to_at_most_30s(backend: Backend) -> None:
    cache = taskguard.connect(backend).cache("users", ttl=timedelta(minutes=2))
    assert cache.config.ttl == 120.0
    assert cache.config.negative_ttl == 30.0
    assert taskguard.connect(backend).cache("short", ttl=5).config.negative_ttl == 5.0
    assert taskguard.connect(backend).cache("off", ttl=5, negative_ttl=0).config.negative_ttl == 0.0


def test_a_memory_backend_is_refused_with_a_clear_error() -> None:
    memory = taskguard.connect("memory://").backend
    with pytest.raises(ConfigurationError, match="needs a Redis backend") as caught:
        taskguard.connect(memory).cache("users", ttl=60)
    assert caught.value.field == "backend"
    with pytest.raises(ConfigurationError, match="needs a Redis backend"):
        taskguard.connect(memory).sessions(ttl=60)


@pytest.mark.parametrize("codec", ["json", "msgpack"])
@pytest.mark.parametrize("value", [{"a": [1, 2.5, "é"]}, "text", 0, False, [None, True]])
def test_cached_copies_round_trip(codec: str, value: Any) -> None:
    c = get_codec(codec)
    decoded = decode(c, encode(c, value, delta=0.25))
    assert (decoded.value, decoded.negative, decoded.delta) == (value, False, 0.25)
    negative = decode(c, encode(c, None, delta=1.5))
    assert (negative.value, negative.negative, negative.delta) == (None, True, 1.5)


class FixedRandom:
    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


def test_xfetch_decision_with_a_fixed_random_number() -> None:
    # -delta * beta * log(1 - r): with r = 1 - e^-1, the threshold is exactly delta * beta.
    r = FixedRandom(1 - 0.36787944117144233)
    assert should_refresh_early(delta=2.0, remaining=1.99, beta=1.0, rand=r)
    assert not should_refresh_early(delta=2.0, remaining=2.01, beta=1.0, rand=r)
    assert should_refresh_early(delta=2.0, remaining=3.9, beta=2.0, rand=r)  # eager beta
    assert not should_refresh_early(delta=2.0, remaining=0.0001, beta=0.0, rand=r)  # disabled
    assert not should_refresh_early(delta=0.0, remaining=0.0001, beta=1.0, rand=r)  # set()
    # rand() == 0 is the least eager draw: log(1) = 0, only an expired copy refreshes.
    assert not should_refresh_early(delta=5.0, remaining=0.001, beta=1.0, rand=FixedRandom(0.0))
