"""Real Redis outages, on a private server the test stops and starts: recovery, script
reloads, a fork, and an outage in the middle of a breaker's call."""

from typing import Any

import pytest
import redis

import taskguard
from taskguard.errors import BackendUnavailable
from taskguard.guards.ratelimit import RateLimit
from taskguard.testing import RedisServer, wait_until

from .harness import REDIS_ONLY, Contract


def test_recovers_after_redis_restart(private_redis: RedisServer) -> None:
    backend = taskguard.connect(private_redis.url, outage_cooldown=0.05).backend
    bucket = RateLimit("1000/s", name="r").op(backend.keys)
    assert backend.admit([bucket]).allowed
    private_redis.stop()
    with pytest.raises(BackendUnavailable):
        backend.admit([bucket])
    private_redis.start()

    def admitted() -> bool:
        try:
            return backend.admit([bucket]).allowed
        except BackendUnavailable:
            return False  # failing fast until the outage breaker's next probe

    wait_until(admitted, timeout=10, interval=0.05, message="backend did not recover")
    backend.close()


def test_scripts_reload_after_script_flush(private_redis: RedisServer) -> None:
    backend = taskguard.connect(private_redis.url).backend
    # A burst, so the second call passes however soon it follows the first (at burst 1
    # it was refused whenever the flush took less than the 1 ms interval).
    bucket = RateLimit("1000/s", burst=10, name="n").op(backend.keys)
    assert backend.admit([bucket]).allowed
    client = redis.Redis.from_url(private_redis.url)
    client.script_flush()
    client.close()
    assert backend.admit([bucket]).allowed  # NOSCRIPT -> SCRIPT LOAD -> EVALSHA
    backend.close()


@REDIS_ONLY
def test_fork_rebuilds_the_pool(contract: Contract) -> None:
    backend = contract.backend
    assert isinstance(backend, taskguard.RedisBackend)
    backend.ping()
    before = backend.client
    backend._pid = -1  # as seen from a forked child
    after = backend.client
    assert after is not before
    after.ping()


def test_an_outage_while_recording_does_not_change_the_calls_result(private_redis: Any) -> None:
    backend = taskguard.connect(private_redis.url, socket_timeout=0.2).backend
    b = taskguard.connect(backend).circuit_breaker("svc")

    def last_call() -> str:
        private_redis.stop()  # Redis goes away while the call runs
        return "done"

    try:
        assert b.call(last_call) == "done"
    finally:
        backend.close()
