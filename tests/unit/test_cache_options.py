"""The cache's options are declared once (CacheOptions): the client passes them through,
CacheConfig validates them. No Redis needed."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

import taskguard
from taskguard.cache import CacheOptions
from taskguard.cache.config import CacheConfig
from taskguard.errors import ConfigurationError


def test_the_defaults_are_validated_into_the_config() -> None:
    config = CacheConfig.create("users", CacheOptions(ttl=timedelta(minutes=1)))
    defaults = CacheOptions(ttl=60)
    assert config.ttl == 60.0
    assert config.strategy == defaults.strategy == "cache-aside"
    assert config.partitions == defaults.partitions
    assert config.negative_ttl == 30.0  # min(ttl, 30)
    assert config.capacity == 0  # unbounded


def test_every_option_is_a_keyword_of_the_client() -> None:
    names = {f.name for f in dataclasses.fields(CacheOptions)}
    assert len(names) == 15
    with pytest.raises(TypeError, match="colour"):
        taskguard.connect("memory://").cache("users", ttl=60, colour="red")


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"ttl": None}, "ttl"),
        ({"ttl": 60, "partitions": 0}, "partitions"),
        ({"ttl": 60, "early_refresh": float("inf")}, "early_refresh"),
        ({"ttl": 60, "on_full": "drop"}, "on_full"),
    ],
)
def test_invalid_options_name_their_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        CacheConfig.create("users", CacheOptions(**options))  # type: ignore[arg-type]
    assert info.value.field == field
