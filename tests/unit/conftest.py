"""Fixtures for in-process GuardedTask runs: a memory backend on a fake clock, and a
Celery app on kombu's memory transport using it (see celery_harness.py). ``isolated``,
for tests that build Celery apps of their own, is in the root conftest.

A unit test needs no server and no sleep: the server fixtures fail here, and so does a
``time.sleep`` called from a test module of this directory. A test that needs Redis goes
to tests/contract (or tests/integration); one that waits polls a condition
(``taskguard.testing.wait_until``) or moves a ``FakeClock``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from celery import Celery

import taskguard
from taskguard.clock import FakeClock

from .celery_harness import celery_app


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(clock: FakeClock) -> taskguard.MemoryBackend:
    return taskguard.MemoryBackend(clock=clock)


@pytest.fixture
def app(backend: taskguard.MemoryBackend) -> Iterator[Celery]:
    with celery_app(backend) as app:
        yield app


# ---------------------------------------------------------------- the rules of this suite


def _needs_a_server(name: str) -> NoReturn:
    pytest.fail(
        f"a unit test needs no server, so {name!r} is not available in tests/unit: "
        "move the test to tests/contract (memory and Redis) or tests/integration",
        pytrace=False,
    )


@pytest.fixture
def redis_url() -> str:
    """Not in tests/unit (nor ``tg_prefix``, ``redis_client``, ``celery_queue``)."""
    _needs_a_server("redis_url")


@pytest.fixture
def private_redis() -> None:
    """Not in tests/unit."""
    _needs_a_server("private_redis")


@pytest.fixture
def postgres_dsn() -> str:
    """Not in tests/unit."""
    _needs_a_server("postgres_dsn")


_HERE = str(Path(__file__).parent) + os.sep


@pytest.fixture(autouse=True)
def _no_sleeping_in_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """``time.sleep`` called by a test module here fails the test (the code under test,
    and helpers such as ``wait_until``, may still sleep)."""
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        if sys._getframe(1).f_code.co_filename.startswith(_HERE):
            pytest.fail(
                "a unit test does not sleep: poll a condition with "
                "taskguard.testing.wait_until, or advance a FakeClock",
                pytrace=False,
            )
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
