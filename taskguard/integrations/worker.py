"""The Prometheus endpoint of a Celery worker, when its ``metrics`` setting has a port.

:class:`MetricsStep` is a worker bootstep. It is created before the pool forks, so it
prepares prometheus_client's multiprocess directory there (every pool process writes its
samples to it, and the parent adds them up) and starts counting; its ``start`` serves
``/metrics`` from the worker's parent once the pool runs; ``stop`` ends it. Importing this
module (``import taskguard`` does) adds the step to every worker; it does nothing unless
``metrics.port`` is set, and imports prometheus_client only then.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from typing import Any

from celery import bootsteps
from celery.signals import worker_init

from taskguard.celery import runtime_for
from taskguard.celery._metrics_settings import MetricsSettings
from taskguard.errors import ConfigurationError

__all__ = ["MetricsStep", "prepare_multiprocess_dir"]

logger = logging.getLogger("taskguard.metrics")

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(settings: MetricsSettings) -> str | None:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at a directory, before prometheus_client loads.

    Returns:
        The directory made here (removed at shutdown), or None when it was given.

    Raises:
        ConfigurationError: prometheus_client was imported before the variable was set,
            so the pool processes' samples would be lost.
    """
    if os.environ.get(ENV):
        return None
    if "prometheus_client" in sys.modules:
        raise ConfigurationError(
            f"prometheus_client was imported before taskguard could set {ENV}: set it "
            "(an empty directory per worker) in the worker's environment",
            field="metrics.multiprocess_dir",
        )
    made = None
    path = settings.multiprocess_dir
    if path is None:
        path = made = tempfile.mkdtemp(prefix="taskguard-metrics-")
    os.makedirs(path, exist_ok=True)
    os.environ[ENV] = path
    return made


class MetricsStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: serve ``/metrics`` from the worker parent when ``metrics.port``."""

    name = "taskguard.metrics"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.settings = MetricsSettings()
        self.server: Any = None
        self.made: str | None = None

    def include_if(self, worker: Any) -> bool:
        try:
            self.settings = runtime_for(worker.app).settings.metrics
        except ConfigurationError:
            return False  # the validate step stops the worker with this error
        return self.settings.enabled

    def create(self, worker: Any) -> MetricsStep:
        # Before the pool forks: its processes inherit the directory and the metrics.
        self.made = prepare_multiprocess_dir(self.settings)
        from . import prometheus

        prometheus.install()
        return self

    def start(self, worker: Any) -> None:
        from . import prometheus

        assert self.settings.port is not None  # include_if
        self.server = prometheus.serve(
            self.settings.port, runtime_for(worker.app).backend, address=self.settings.address
        )

    def stop(self, worker: Any) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self.made is not None:
            shutil.rmtree(self.made, ignore_errors=True)
            self.made = None

    terminate = stop


def _install_step(sender: Any = None, **kwargs: Any) -> None:
    app = getattr(sender, "app", None)
    if app is not None:
        app.steps["worker"].add(MetricsStep)


worker_init.connect(_install_step, weak=False)
