"""Fixtures for in-process GuardedTask runs: a memory backend on a fake clock, and a
Celery app on kombu's memory transport using it (see celery_harness.py). ``isolated``,
for tests that build Celery apps of their own, is in the root conftest."""

from __future__ import annotations

from collections.abc import Iterator

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
