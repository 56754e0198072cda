"""Root fixtures: real Redis and PostgreSQL servers, unique key prefixes and queues, and
``isolated`` for tests that build Celery apps of their own.

Servers are found in this order:

1. ``$TASKGUARD_TEST_REDIS_URL`` / ``$TASKGUARD_TEST_POSTGRES_DSN`` when set (an error if
   nothing answers there). The value ``throwaway`` forces a private server instead.
2. ``redis://127.0.0.1:6379/0`` / ``postgresql://postgres@127.0.0.1:5432/test`` when
   they answer.
3. Otherwise a throwaway server started for the session (see ``taskguard.testing``).

Tests only ever delete keys under their own ``tg_prefix`` (and their own
``celery_queue``), so a shared server is never flushed.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
import redis
from celery import _state as celery_state

from taskguard import signals
from taskguard.testing.servers import (
    PostgresServer,
    RedisServer,
    postgres_available,
    redis_available,
)
from taskguard.testing.topologies import RedisCluster, RedisSentinel

# ``pytester`` runs a pytest session inside a test: tests/test_servers.py uses it to check
# what a fixture's teardown leaves behind.
pytest_plugins = ("pytester",)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
THROWAWAY = "throwaway"

_INTEGRATION_DIR = Path(__file__).parent / "integration"
_CHAOS_DIR = Path(__file__).parent / "chaos"


# ---------------------------------------------------------------- markers


@cache
def _docker_engine_runs() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        result = subprocess.run([docker, "info"], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark everything under tests/integration/ (tests/chaos/) ``integration`` (``chaos``),
    and skip ``docker`` tests without Docker."""
    skip_docker = pytest.mark.skip(reason="no Docker engine on this machine")
    for item in items:
        if _INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)
        if _CHAOS_DIR in item.path.parents:
            item.add_marker(pytest.mark.chaos)
        if item.get_closest_marker("docker") is not None and not _docker_engine_runs():
            item.add_marker(skip_docker)


# ---------------------------------------------------------------- Redis


def _delete_matching(client: redis.Redis, pattern: str) -> None:
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=500):
        batch.append(key)
        if len(batch) >= 500:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis server for the whole session (see the module docstring)."""
    configured = os.environ.get("TASKGUARD_TEST_REDIS_URL", "").strip()
    if configured and configured != THROWAWAY:
        if not redis_available(configured, timeout=2.0):
            pytest.fail(
                f"TASKGUARD_TEST_REDIS_URL={configured} does not answer PING", pytrace=False
            )
        yield configured
        return
    if not configured and redis_available(DEFAULT_REDIS_URL):
        yield DEFAULT_REDIS_URL
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A ``redis+cluster://`` URL: ``$TASKGUARD_TEST_CLUSTER_URL``, else a 3-master cluster
    (1 replica each) started on loopback for the session and stopped after it."""
    configured = os.environ.get("TASKGUARD_TEST_CLUSTER_URL", "").strip()
    if configured:
        yield configured
        return
    with RedisCluster() as cluster:
        yield cluster.url


@pytest.fixture(scope="session")
def redis_sentinel_url() -> Iterator[str]:
    """A ``redis+sentinel://`` URL: ``$TASKGUARD_TEST_SENTINEL_URL``, else a master, a
    replica and 3 sentinels started on loopback for the session and stopped after it."""
    configured = os.environ.get("TASKGUARD_TEST_SENTINEL_URL", "").strip()
    if configured:
        yield configured
        return
    with RedisSentinel() as sentinel:
        yield sentinel.url


@pytest.fixture
def tg_prefix(redis_url: str) -> Iterator[str]:
    """A unique key prefix (``tgt-<8 hex>``); its keys are deleted after the test."""
    prefix = f"tgt-{uuid.uuid4().hex[:8]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        _delete_matching(client, f"{prefix}:*")
    except (redis.RedisError, OSError):
        pass  # an outage test may have left the server down; nothing to clean then
    finally:
        client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client for ``redis_url``, closed after the test."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A throwaway Redis server the test owns: stop, restart or kill it at will."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def celery_queue(redis_url: str) -> Iterator[str]:
    """A unique queue name (``tgq-<hex>``); its broker keys are deleted after the test."""
    queue = f"tgq-{uuid.uuid4().hex[:12]}"
    yield queue
    client = redis.Redis.from_url(redis_url)
    try:
        # kombu's Redis transport keeps a queue as a list named after it (plus one list
        # per priority level, with the queue name as the first part of the key), and
        # the bindings of an exchange named after the queue in a set.
        _delete_matching(client, f"{queue}*")
        client.unlink(f"_kombu.binding.{queue}")
    except (redis.RedisError, OSError):
        pass
    finally:
        client.close()


# ---------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """DSN of a PostgreSQL database for the whole session (see the module docstring)."""
    configured = os.environ.get("TASKGUARD_TEST_POSTGRES_DSN", "").strip()
    if configured and configured != THROWAWAY:
        if not postgres_available(configured, timeout=2.0):
            pytest.fail(
                f"TASKGUARD_TEST_POSTGRES_DSN={configured} does not accept connections",
                pytrace=False,
            )
        yield configured
        return
    if not configured and postgres_available(DEFAULT_POSTGRES_DSN):
        yield DEFAULT_POSTGRES_DSN
        return
    with PostgresServer() as server:
        yield server.dsn


# ---------------------------------------------------------------- Celery apps

_SIGNALS = [
    getattr(signals, name) for name in signals.__all__ if hasattr(getattr(signals, name), "send")
]


@pytest.fixture
def isolated() -> Iterator[None]:
    """Undo what a test's (or a docs example's) own Celery app does to process-wide state.

    That is: Celery's current and default app; the finalizers ``@app.task`` registers for
    *every* later app (tasks are ``shared`` by default, so an example's task would be added
    to the next example's app of the same name); and receivers of taskguard's signals.
    """
    current_app = getattr(celery_state._tls, "current_app", None)
    default_app = celery_state.default_app
    finalizers = set(celery_state._on_app_finalizers)
    receivers = {signal: list(signal.receivers) for signal in _SIGNALS}
    try:
        yield
    finally:
        celery_state._on_app_finalizers.intersection_update(finalizers)
        for signal, saved in receivers.items():
            signal.receivers[:] = saved
            signal.sender_receivers_cache.clear()
        celery_state._tls.current_app = current_app
        celery_state.default_app = default_app
        gc.collect()
