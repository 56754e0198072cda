"""The contract suite: one fixture, ``contract``, runs each test on the memory backend (on
a fake clock) and on a real Redis, like dramatiq's ``rate_limiter_backend``.

A test that only makes sense on Redis (key TTLs, scripts, pub/sub, a real outage) takes
the fixture with ``@REDIS_ONLY`` (``harness.py``); a whole module does so with
``pytestmark = REDIS_ONLY``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

import taskguard
from taskguard.clock import FakeClock
from taskguard.heartbeat import heartbeat_for

from .aio_support import Pair
from .harness import Contract, real_time


@pytest.fixture(params=["memory", "redis"])
def contract(request: pytest.FixtureRequest) -> Iterator[Contract]:
    """The backend under test: ``memory`` (fake clock) or ``redis`` (a unique prefix)."""
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


@pytest.fixture
def pair(redis_url: str, tg_prefix: str) -> Iterator[Pair]:
    """A sync client on the test Redis under ``tg_prefix``, and asyncio ones on demand."""
    sync = taskguard.connect(redis_url, prefix=tg_prefix, redis_options={"client_name": tg_prefix})
    found = Pair(redis_url, tg_prefix, sync, redis.Redis.from_url(redis_url))
    try:
        yield found
    finally:
        found.close()
