"""Fixtures for in-process GuardedTask runs: a memory backend on a fake clock, and a
Celery app on kombu's memory transport using it (see celery_harness.py); ``isolated``
for tests that build Celery apps of their own."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from celery import Celery
from celery import _state as celery_state

import taskguard
from taskguard import signals
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
