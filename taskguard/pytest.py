"""A pytest plugin for projects that use taskguard: guarded tasks in fast unit tests.

Enable it in your root ``conftest.py``::

    pytest_plugins = ["taskguard.pytest"]

It gives three fixtures:

* ``taskguard_clock``: a :class:`~taskguard.clock.FakeClock`, which moves only when told to
  (``taskguard_clock.advance(6)``);
* ``taskguard_backend``: a :class:`~taskguard.MemoryBackend` on that clock, fresh for each
  test (``taskguard.connect(taskguard_backend)`` builds limiters and locks on it);
* ``run_guarded``: ``run_guarded(task, *args, **kwargs)`` runs a guarded task eagerly, in
  the test, with its guards enforced on that backend: it returns what the task returned,
  and a denial raises the guard's exception (``RateLimited``, ``LockHeld``...) with its
  ``retry_after``, where a worker would defer.

It is not registered as an automatic (``pytest11``) plugin on purpose: loading it imports
taskguard, and an automatic plugin is loaded before coverage starts measuring. See
docs/testing.md, which also says how it fits next to pytest-celery.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from taskguard.backend.memory import MemoryBackend
from taskguard.celery import runtime_for
from taskguard.clock import FakeClock
from taskguard.heartbeat import heartbeat_for

__all__ = ["GuardedRunner", "run_guarded", "taskguard_backend", "taskguard_clock"]


class GuardedRunner:
    """Runs guarded tasks eagerly with their guards enforced on one backend.

    Each Celery app whose task it runs keeps its guard state in ``backend`` (and reads its
    settings afresh) until :meth:`close`, which gives the app its own backend back.
    """

    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend
        self._bound: set[int] = set()
        self._stack = ExitStack()

    def bind(self, app: Any) -> None:
        """Keep ``app``'s guard state in this runner's backend (done by the first run of
        one of its tasks; call it first to use ``task.delay()`` with
        ``task_always_eager`` instead)."""
        if id(app) in self._bound:
            return
        runtime = runtime_for(app)
        self._stack.enter_context(runtime.using_backend(self.backend))
        # Settings are read once per process: a test's own app.conf must count.
        self._stack.callback(runtime.reload)
        runtime.reload()
        self._bound.add(id(app))

    def __call__(self, task: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Run ``task(*args, **kwargs)`` as an eager Celery task, guards enforced.

        Returns:
            What the task returned (None for a run a guard skipped, such as a
            ``Lock(on_conflict="skip")`` finding its lock held).

        Raises:
            GuardDenied: The guard that refused the run (``RateLimited``, ``LockHeld``,
                ``ConcurrencyLimitReached``, ``CircuitOpen``), with ``retry_after``.
            Exception: Whatever the task raised.
        """
        self.bind(task.app)
        return task.apply(args=args, kwargs=kwargs, throw=True).get()

    def close(self) -> None:
        """Give every app its own backend back."""
        self._stack.close()
        self._bound.clear()


@pytest.fixture
def taskguard_clock() -> FakeClock:
    """A fake clock for taskguard's memory backend: ``advance(seconds)`` moves it."""
    return FakeClock()


@pytest.fixture
def taskguard_backend(taskguard_clock: FakeClock) -> Iterator[MemoryBackend]:
    """A fresh memory backend on ``taskguard_clock``; its lease heartbeat stops after the
    test."""
    backend = MemoryBackend(clock=taskguard_clock)
    try:
        yield backend
    finally:
        heartbeat_for(backend).stop()


@pytest.fixture
def run_guarded(taskguard_backend: MemoryBackend) -> Iterator[GuardedRunner]:
    """``run_guarded(task, *args, **kwargs)``: run a guarded task eagerly, guards enforced
    on ``taskguard_backend``; a denial raises the guard's exception."""
    runner = GuardedRunner(taskguard_backend)
    try:
        yield runner
    finally:
        runner.close()
