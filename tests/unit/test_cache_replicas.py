"""The write-behind ``replicas`` / ``replica_timeout`` settings are validated (errors name
the field), for the sync and the asyncio cache, and refused where ``WAIT`` cannot be kept:
on Redis Cluster and with a timeout the socket timeout would cut short. No Redis needed:
checking the settings opens no connection."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import taskguard
import taskguard.aio
from taskguard.cache import CacheOptions
from taskguard.cache.config import CacheConfig
from taskguard.errors import ConfigurationError

from .celery_harness import DEAD_URL
from .test_cache_fakes import MemoryStore

CLUSTER_URL = "redis+cluster://127.0.0.1:1,127.0.0.1:2/"


def _wb(**options: Any) -> dict[str, Any]:
    return {"ttl": 60, "strategy": "write-behind", "store": MemoryStore(), **options}


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (_wb(replicas=-1), "replicas"),
        (_wb(replicas=1.5), "replicas"),
        (_wb(replicas=True), "replicas"),
        (_wb(replicas="1"), "replicas"),
        ({"ttl": 60, "replicas": 1}, "replicas"),  # cache-aside writes queue nothing
        (_wb(replicas=1, replica_timeout=0), "replica_timeout"),
        (_wb(replicas=1, replica_timeout=-0.1), "replica_timeout"),
        (_wb(replicas=1, replica_timeout=0.0001), "replica_timeout"),
        (_wb(replicas=1, replica_timeout="fast"), "replica_timeout"),
    ],
)
def test_invalid_replica_settings_name_their_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        CacheConfig.create("users", CacheOptions(**options))
    assert caught.value.field == field


def test_defaults_send_no_wait_and_timeouts_take_timedeltas() -> None:
    config = CacheConfig.create("users", CacheOptions(**_wb()))
    assert config.replicas == 0
    assert config.replica_timeout == 0.1
    config = CacheConfig.create(
        "users", CacheOptions(**_wb(replicas=2, replica_timeout=timedelta(milliseconds=250)))
    )
    assert (config.replicas, config.replica_timeout, config.replica_timeout_ms) == (2, 0.25, 250)


def test_a_timeout_the_socket_timeout_would_cut_short_is_refused() -> None:
    client = taskguard.connect(DEAD_URL, prefix="tgu", socket_timeout=0.3)
    with pytest.raises(ConfigurationError, match="socket_timeout") as caught:
        client.cache("users", **_wb(replicas=1, replica_timeout=0.3))
    assert caught.value.field == "replica_timeout"
    client.cache("users", **_wb(replicas=1, replica_timeout=0.2))  # below it: accepted
    client.close()


def test_redis_cluster_is_refused_sync_and_asyncio() -> None:
    client = taskguard.connect(CLUSTER_URL, prefix="tgu")
    with pytest.raises(ConfigurationError, match="Redis Cluster") as caught:
        client.cache("users", **_wb(replicas=1))
    assert caught.value.field == "replicas"
    client.cache("users", **_wb())  # replicas=0: no WAIT, accepted
    aio_client = taskguard.aio.connect(CLUSTER_URL, prefix="tgu")
    with pytest.raises(ConfigurationError, match="Redis Cluster") as caught:
        aio_client.cache("users", **_wb(replicas=1))
    assert caught.value.field == "replicas"


def test_asyncio_checks_the_timeout_against_its_socket_timeout() -> None:
    aio_client = taskguard.aio.connect(DEAD_URL, prefix="tgu", socket_timeout=0.2)
    with pytest.raises(ConfigurationError) as caught:
        aio_client.cache("users", **_wb(replicas=1, replica_timeout=0.5))
    assert caught.value.field == "replica_timeout"
