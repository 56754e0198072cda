"""``taskguard drain``: its defaults are the drain settings' (and DrainPool's), and its
values are validated by DrainSettings, a bad one being a click error naming the option."""

from __future__ import annotations

import inspect
import signal
import subprocess
import sys
from typing import Any

import click
import pytest
from click.testing import CliRunner

from taskguard.cli.drain import drain
from taskguard.drain import DrainPool, DrainSettings

TUNABLES = (
    "workers",
    "batch_size",
    "linger",
    "lease_ttl",
    "max_deliveries",
    "claim_idle",
    "backoff_base",
    "backoff_max",
)


def _defaults() -> dict[str, Any]:
    return {p.name: p.default for p in drain.params if isinstance(p, click.Option)}


def test_every_tunable_defaults_to_the_one_declaration() -> None:
    options = _defaults()
    pool = inspect.signature(DrainPool).parameters
    for name in TUNABLES:
        assert options[name] == getattr(DrainSettings, name) == pool[name].default, name
    assert options["stop_timeout"] == DrainSettings.stop_timeout
    assert inspect.signature(DrainPool.stop).parameters["timeout"].default == (
        DrainSettings.stop_timeout
    )


def test_the_batch_size_default_is_2000_everywhere() -> None:
    assert DrainSettings.batch_size == 2000
    result = CliRunner().invoke(drain, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    line = next(text for text in result.output.splitlines() if "--batch-size" in text)
    assert "[default: 2000]" in line


@pytest.mark.parametrize(
    ("args", "option", "message"),
    [
        (["--batch-size", "0"], "--batch-size", "must be a positive integer, got 0"),
        (["--workers", "0"], "--workers", "must be a positive integer, got 0"),
        (["--lease-ttl", "0"], "--lease-ttl", "must be positive seconds, got 0.0"),
        (["--linger", "4"], "--linger", "must be under a third of lease_ttl"),
        (["--backoff-max", "0.01"], "--backoff-max", "must be at least backoff_base"),
        (["--namespace", ""], "--namespace", "must be a list of namespace names"),
        (["--table", ""], "--table", "must be a non-empty string"),
        (["--store", "mysql://db/app"], "--store", "no store is registered for 'mysql://db/app'"),
    ],
)
def test_a_bad_value_is_a_click_error_naming_its_option(
    monkeypatch: pytest.MonkeyPatch, args: list[str], option: str, message: str
) -> None:
    monkeypatch.delenv("TASKGUARD_STORE_URL", raising=False)
    monkeypatch.delenv("TASKGUARD_DB_URL", raising=False)
    store = [] if "--store" in args else ["--store", "sqlite://"]
    # Port 1: nothing listens; the command must fail before it needs Redis.
    result = CliRunner().invoke(
        drain, ["--redis-url", "redis://127.0.0.1:1/0", *store, *args], terminal_width=200
    )
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}': {message}" in result.output


def test_the_shared_builder_applies_every_setting() -> None:
    import taskguard
    from taskguard.drain import pool_from_settings, store_from_settings
    from taskguard.errors import ConfigurationError
    from taskguard.sinks.sql import SQLStore

    settings = DrainSettings.from_mapping(
        {"store": "sqlite://", "table": "kv", "workers": 3, "batch_size": 10, "claim_idle": 7}
    )
    store = store_from_settings(settings)
    assert isinstance(store, SQLStore)
    assert store.table.name == "kv"
    store.close()
    backend = taskguard.connect("redis://127.0.0.1:1/0").backend  # never connected
    pool = pool_from_settings(backend, settings, store)
    assert pool.workers == 3
    assert (pool.options.batch_size, pool.options.claim_idle) == (10, 7.0)
    assert pool.options.lease_ttl == DrainSettings.lease_ttl
    with pytest.raises(ConfigurationError) as info:
        pool_from_settings(taskguard.connect("memory://").backend, settings)
    assert info.value.field == "drain.enabled"
    with pytest.raises(ConfigurationError) as info:
        pool_from_settings(backend, DrainSettings.from_mapping({"store": "nope://x"}))
    assert info.value.field == "drain.store"


def test_the_heap_is_frozen_before_the_pool_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    # A process of its own: what it built to start is kept out of the collector's way
    # (taskguard.drain.freeze_heap), so full collections walk the batches in flight alone.
    # The freeze is recorded, not done: this test process must keep collecting as usual.
    import taskguard.drain

    calls: list[str] = []

    class Started(Exception):
        pass

    class Pool:
        def start(self) -> None:
            calls.append("start")
            raise Started

    def freeze() -> int:
        calls.append("freeze")
        return 0

    monkeypatch.setattr(taskguard.drain, "pool_from_settings", lambda *args: Pool())
    monkeypatch.setattr(taskguard.drain, "freeze_heap", freeze)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        result = CliRunner().invoke(
            drain, ["--redis-url", "redis://127.0.0.1:1/0", "--store", "sqlite://"]
        )
    finally:
        for sig, handler in handlers.items():  # the command installs its own
            signal.signal(sig, handler)
    assert isinstance(result.exception, Started), result.output
    assert calls == ["freeze", "start"]


def test_freeze_heap_collects_first_then_freezes_what_is_alive() -> None:
    # In a process of its own: a frozen heap would change when this one collects.
    program = """
import gc, weakref
from taskguard.drain import freeze_heap

class Node:
    def __init__(self):
        self.me = self

node = weakref.ref(Node())  # a cycle, garbage already: collected, not frozen
frozen = freeze_heap()
print(frozen, gc.get_freeze_count() > 1000, node() is not None)
"""
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    )
    frozen, many, node_left = done.stdout.split()
    assert int(frozen) > 1000  # every module, class and function alive then
    assert (many, node_left) == ("True", "False")
