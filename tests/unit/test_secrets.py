"""No password reaches a repr, an error, a log line or the CLI (issue 11, #6): every URL
goes through taskguard.urls.redact. The helper itself, with its property test, is in
test_urls.py."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from click.testing import CliRunner

import taskguard
from taskguard import ConfigurationError
from taskguard.backend import backend_from_url
from taskguard.celery import Settings
from taskguard.celery._bootsteps import check_backend
from taskguard.cli.drain import drain
from taskguard.drain import DrainSettings
from taskguard.sinks.sql import SQLStore
from taskguard.urls import redact

SECRET = "hunter2-s3cret"
URL = f"redis://app:{SECRET}@cache.internal:6379/0"
DEAD = f"redis://app:{SECRET}@127.0.0.1:1/0"  # nothing listens on port 1


def test_reprs_of_the_backend_and_everything_built_on_it() -> None:
    client = taskguard.connect(URL)
    shown = [
        repr(client),
        repr(client.backend),
        repr(client.rate_limiter("api", "1/s")),
        repr(client.lock("invoice")),
        repr(client.semaphore("partner", limit=2)),
        repr(client.circuit_breaker("partner")),
        repr(client.circuit_breaker("hot", hot_path=True)),
        repr(taskguard.connect(f"redis://cache.internal/0?password={SECRET}").backend),
    ]
    for text in shown:
        assert SECRET not in text, text
        assert "cache.internal" in text, text


def test_the_backend_error_and_its_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    backend = taskguard.connect(DEAD).backend
    with pytest.raises(taskguard.BackendUnavailable) as info:
        backend.ping()
    assert SECRET not in str(info.value)
    limiter = taskguard.connect(backend).rate_limiter("api", "1/s")
    assert limiter.try_acquire().degraded  # logs the outage
    assert SECRET not in caplog.text


@pytest.mark.parametrize(
    "build",
    [
        lambda: backend_from_url(f"http://app:{SECRET}@cache.internal/0"),
        lambda: Settings.from_mapping({"redis_url": f"http://app:{SECRET}@cache.internal/0"}),
        lambda: DrainSettings.from_mapping({"store": f"app:{SECRET}@db.internal/app"}),
        lambda: SQLStore(f"mysql://app:{SECRET}@db.internal/app"),
        lambda: SQLStore(f"nonsense:{SECRET}@db.internal"),
        lambda: SQLStore(f"postgresql://app:{SECRET}@db.internal:notaport/app"),
    ],
)
def test_configuration_errors(build: Any) -> None:
    with pytest.raises((ConfigurationError, ValueError)) as info:
        build()
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    "args",
    [
        ["--redis-url", f"http://app:{SECRET}@cache.internal/0", "--store", "sqlite://"],
        ["--redis-url", "redis://127.0.0.1:1/0", "--store", f"mysql://app:{SECRET}@db/app"],
        ["--redis-url", "redis://127.0.0.1:1/0", "--store", f"app:{SECRET}@db/app"],
    ],
)
def test_the_drain_cli(args: list[str]) -> None:
    result = CliRunner().invoke(drain, args)
    assert result.exit_code != 0
    shown = result.output + (repr(result.exception) if result.exception else "")
    assert SECRET not in shown, shown


def test_the_worker_start_line_for_an_unreachable_redis(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="taskguard")
    backend = taskguard.connect(DEAD).backend
    check_backend(backend, redact(DEAD), streams=False)  # logs, does not raise
    assert "is unreachable at worker start" in caplog.text
    assert "app:***@127.0.0.1:1" in caplog.text
    assert SECRET not in caplog.text
