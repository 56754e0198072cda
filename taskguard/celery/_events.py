"""Guard events from a Celery worker: :class:`EventsStep` publishes its signals as events.

The step is added to every worker (importing :mod:`taskguard.celery` connects the
``worker_init`` handler). When the ``events`` setting is on (the default), it installs
:func:`taskguard.events.install` on the app's backend in the worker's parent process,
before the pool forks, so every pool process publishes too: breaker transitions, lost
leases and exhausted deferral caps from the tasks, dead letters from a drain pool run by
the worker.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps
from celery.signals import worker_init

from taskguard import events

from ._events_settings import EventsSettings
from ._runtime import runtime_for

__all__ = ["EventsStep"]

logger = logging.getLogger("taskguard.events")


class EventsStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: publish this worker's guard events when ``events`` is on."""

    name = "taskguard.events"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        # A bad value stops the worker here (a bootstep's error is raised, a signal
        # handler's only logged).
        self.settings = EventsSettings.from_app(worker.app)
        self.installed = False

    def include_if(self, worker: Any) -> bool:
        return self.settings.enabled

    def create(self, worker: Any) -> EventsStep:
        # Before the pool forks: its processes inherit the handlers and the backend.
        backend = runtime_for(worker.app).backend
        events.install(backend)
        self.installed = True
        logger.info("taskguard: publishing guard events on %s", backend.keys.events())
        return self

    def start(self, worker: Any) -> None:
        pass  # publishing began in create(), before the pool forked

    def stop(self, worker: Any) -> None:
        if self.installed:
            events.uninstall()
            self.installed = False

    terminate = stop


def _install_step(sender: Any = None, **kwargs: Any) -> None:
    app = getattr(sender, "app", None)
    if app is not None:
        app.steps["worker"].add(EventsStep)


worker_init.connect(_install_step, weak=False)
