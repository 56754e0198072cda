"""The contract suite: one fixture, ``contract``, runs each test on the memory backend (on
a fake clock) and on a real Redis, like dramatiq's ``rate_limiter_backend``.

A test that only makes sense on Redis (key TTLs, scripts, pub/sub, a real outage) takes
the fixture with ``@REDIS_ONLY`` (``harness.py``); a whole module does so with
``pytestmark = REDIS_ONLY``.

A module marked ``TOPOLOGIES`` also runs on a Redis Cluster (3 masters, 1 replica each)
and on a Sentinel-managed master (``cluster`` and ``sentinel``): the session fixtures
``redis_cluster_url`` / ``redis_sentinel_url`` (tests/conftest.py) start them once, on
loopback, the first time such a test runs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

import taskguard
from taskguard.backend.topology import client_for
from taskguard.clock import FakeClock
from taskguard.heartbeat import heartbeat_for

from .aio_support import Pair
from .harness import Contract, real_time


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``contract`` by backend: memory and Redis; Redis only for ``REDIS_ONLY``;
    plus Cluster and Sentinel for a ``TOPOLOGIES`` module."""
    if "contract" not in metafunc.fixturenames:
        return
    kinds = ["memory", "redis"]
    if metafunc.definition.get_closest_marker("redis_only") is not None:
        kinds.remove("memory")
    topologies = metafunc.definition.get_closest_marker("topologies")
    if topologies is not None:
        if topologies.kwargs.get("only"):
            kinds = []
        kinds += topologies.args or ["cluster", "sentinel"]
    metafunc.parametrize("contract", kinds, indirect=True)


@pytest.fixture
def contract(request: pytest.FixtureRequest) -> Iterator[Contract]:
    """The backend under test: ``memory`` (fake clock), ``redis`` (a unique prefix), or
    ``cluster`` / ``sentinel`` (a unique prefix on the session's topology)."""
    if request.param in TOPOLOGY_URLS:
        yield from _on_topology(request, request.param)
        return
    if request.param == "memory":
        # Starts at the wall-clock time, so both backends tell the same kind of time.
        clock = FakeClock(start=time.time())
        memory = taskguard.MemoryBackend(clock=clock)
        try:
            yield Contract("memory", memory, clock.advance)
        finally:
            heartbeat_for(memory).stop()
        return
    url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("tg_prefix")
    backend = taskguard.connect(url, prefix=prefix, redis_options={"client_name": prefix}).backend
    client = redis.Redis.from_url(url)
    try:
        yield Contract("redis", backend, real_time, client=client, url=url)
    finally:
        heartbeat_for(backend).stop()
        client.close()
        backend.close()


#: Contract kind -> the session fixture giving its URL (tests/conftest.py).
TOPOLOGY_URLS = {"cluster": "redis_cluster_url", "sentinel": "redis_sentinel_url"}


def _on_topology(request: pytest.FixtureRequest, kind: str) -> Iterator[Contract]:
    url: str = request.getfixturevalue(TOPOLOGY_URLS[kind])
    prefix = f"tgt-{uuid.uuid4().hex[:8]}"
    backend = taskguard.connect(url, prefix=prefix, redis_options={"client_name": prefix}).backend
    client = client_for(url, {})
    try:
        yield Contract(kind, backend, real_time, client=client, url=url)
    finally:
        heartbeat_for(backend).stop()
        backend.close()
        # scan_iter visits every master of a cluster.
        for key in client.scan_iter(match=f"{prefix}:*", count=500):
            client.unlink(key)
        client.close()


@pytest.fixture
def pair(redis_url: str, tg_prefix: str) -> Iterator[Pair]:
    """A sync client on the test Redis under ``tg_prefix``, and asyncio ones on demand."""
    sync = taskguard.connect(redis_url, prefix=tg_prefix, redis_options={"client_name": tg_prefix})
    found = Pair(redis_url, tg_prefix, sync, redis.Redis.from_url(redis_url))
    try:
        yield found
    finally:
        found.close()
