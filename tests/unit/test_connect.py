"""connect() and the key schema, without a server: connecting opens no connection."""

import pytest

import taskguard
from taskguard.keys import KeySchema

from .celery_harness import DEAD_URL


def test_key_schema_escapes_braces() -> None:
    keys = KeySchema(prefix="app", tag="t")
    assert keys.rate_limit("a{b}", "c}d") == "app:{t}:rl:a%7Bb%7D:c%7Dd"
    assert keys.pattern() == "app:{t[}:]*"
    with pytest.raises(ValueError, match="prefix"):
        KeySchema(prefix="bad{prefix}")


def test_connect_urls() -> None:
    assert isinstance(taskguard.connect("memory://").backend, taskguard.MemoryBackend)
    client = taskguard.connect(DEAD_URL)  # lazy: nothing is asked of the server yet
    backend = client.backend
    assert isinstance(backend, taskguard.RedisBackend)
    assert taskguard.connect(backend).backend is backend
    assert taskguard.connect(client) is client
    assert "RedisBackend" in repr(client)
    with pytest.raises(ValueError, match="unsupported backend URL"):
        taskguard.connect("mysql://x")
    backend.close()


def test_connect_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKGUARD_REDIS_URL", "memory://")
    assert isinstance(taskguard.connect().backend, taskguard.MemoryBackend)
