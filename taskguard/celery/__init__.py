"""The Celery layer: :class:`GuardedTask`, the per-app runtime and its settings.

Everything Celery-specific lives here (task runs, deferral, publish-time uniqueness, the
worker bootsteps); the layers below it (guards, backend, cache, drain) know nothing of
Celery.
"""

from . import _events  # noqa: F401 - adds the worker step that publishes guard events
from ._control import inspect_workers, worker_view  # also registers the control commands
from ._runtime import Runtime, runtime_for
from ._settings import DeferralPolicy, Settings, TaskSettings
from ._task import GuardedTask

__all__ = [
    "DeferralPolicy",
    "GuardedTask",
    "Runtime",
    "Settings",
    "TaskSettings",
    "inspect_workers",
    "runtime_for",
    "worker_view",
]
