"""taskguard's Django system check: the settings and the guarded tasks, at ``manage.py check``.

It runs what a worker runs at start (settings validated, every guarded task resolved
against them), and reports each problem instead of stopping at the first:

============== ==============================================================================
id             meaning
============== ==============================================================================
taskguard.E001 an invalid setting or guard (a :class:`~taskguard.errors.ConfigurationError`);
               ``obj`` is the task (or task pattern), or ``CELERY_TASKGUARD`` for a global
               setting, and the message names the field
taskguard.E002 the Celery app (``TASKGUARD_CELERY_APP``) or its task modules do not import
taskguard.W001 an entry of ``tasks`` matches no task of the app (a typo, most likely)
taskguard.W002 the app found has no guarded task, so only the settings were checked
============== ==============================================================================

The Celery app is the one ``TASKGUARD_CELERY_APP`` names (``"proj.celery:app"``; also
``CELERY_TASKGUARD["celery_app"]``), or else Celery's current app: the one the project's
``proj/__init__.py`` imports, in Celery's documented Django layout. Its task modules are
imported as a worker imports them (``imports``, ``include`` and ``autodiscover_tasks()``).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery, current_app

from taskguard.celery import Settings, runtime_for
from taskguard.errors import ConfigurationError

try:
    from django.conf import settings as django_settings
    from django.core import checks
except ImportError as exc:  # pragma: no cover - the [django] extra is not installed
    raise ImportError(
        "taskguard.contrib.django needs Django: pip install 'celery-taskguard[django]'"
    ) from exc

__all__ = ["TAG", "check_taskguard", "messages_for"]

#: ``manage.py check --tag taskguard`` runs this check alone.
TAG = "taskguard"
#: Where the messages about global settings point (Django shows it before the id).
SETTINGS_OBJ = "CELERY_TASKGUARD"
APP_SETTING = "TASKGUARD_CELERY_APP"

_state = threading.local()


def check_taskguard(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """The registered check: validate Django's taskguard settings and the Celery app."""
    names = [name for name in dir(django_settings) if name.isupper() and "TASKGUARD" in name]
    return messages_for({name: getattr(django_settings, name) for name in names})


def messages_for(conf: dict[str, Any]) -> list[Any]:
    """The check's messages for settings ``conf`` (Django settings by name).

    Importing the task modules sends Celery's ``import_modules`` signal, on which Celery's
    Django fixup runs the system checks again: that nested run reports nothing here.
    """
    if getattr(_state, "active", False):
        return []
    with _running():
        try:
            settings = Settings.from_conf(conf)
        except ConfigurationError as exc:
            # Every task resolves against these settings: one error says it all.
            return [_error(exc)]
        app, messages = _celery_app(settings.celery_app)
        if app is not None:
            messages += _check_app(app, guessed=settings.celery_app is None)
        return messages


@contextmanager
def _running() -> Iterator[None]:
    _state.active = True
    try:
        yield
    finally:
        _state.active = False


def _celery_app(path: str | None) -> tuple[Any | None, list[Any]]:
    if path is None:
        return current_app._get_current_object(), []
    module_name, colon, attribute = path.partition(":")
    if not colon:
        module_name, _, attribute = path.rpartition(".")
    try:
        found: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except Exception as exc:  # a check reports what breaks; it never crashes the command
        return None, [_load_error(f"cannot import the Celery app {path!r}: {exc!r}")]
    if not isinstance(found, Celery):
        return None, [_load_error(f"{path!r} is a {type(found).__name__}, not a Celery app")]
    return found, []


def _check_app(app: Any, *, guessed: bool) -> list[Any]:
    if not app.loader.worker_initialized:  # a starting worker imports them itself
        try:
            app.loader.import_default_modules()
        except Exception as exc:  # a check reports what breaks; it never crashes the command
            return [_load_error(f"cannot import the tasks of Celery app {app.main!r}: {exc!r}")]
    runtime = runtime_for(app)
    runtime.reload()  # settings are read once per process; a check reads them afresh
    try:
        settings = runtime.settings
    except ConfigurationError as exc:  # the app is configured from elsewhere than Django
        return [_error(exc)]
    messages = []
    tasks = runtime.guarded_tasks()
    for task in tasks:
        try:
            runtime.task_settings(task)
        except ConfigurationError as exc:
            messages.append(_error(exc.for_task(task.name)))
    if not tasks:
        if guessed:
            messages.append(
                checks.Warning(
                    f"the Celery app {app.main!r} has no guarded task, so only the taskguard "
                    "settings were checked",
                    hint=f"Set {APP_SETTING} = 'proj.celery:app' to the app your workers run.",
                    obj=APP_SETTING,
                    id="taskguard.W002",
                )
            )
        return messages
    names = [name for name in app.tasks if not name.startswith("celery.")]
    for pattern in settings.patterns_matching_nothing(names):
        messages.append(
            checks.Warning(
                f"the entry {pattern!r} of 'tasks' matches no task of Celery app {app.main!r}",
                hint="Check the task name or glob for a typo.",
                obj=SETTINGS_OBJ,
                id="taskguard.W001",
            )
        )
    return messages


def _error(exc: ConfigurationError) -> Any:
    message = f"[field {exc.field!r}] {exc.reason}" if exc.field else exc.reason
    if exc.task:
        hint = "Fix the task's guards, or the entries of CELERY_TASKGUARD['tasks'] matching it."
    else:
        hint = "See the settings reference of taskguard (docs/settings.md)."
    return checks.Error(message, hint=hint, obj=exc.task or SETTINGS_OBJ, id="taskguard.E001")


def _load_error(message: str) -> Any:
    return checks.Error(
        message,
        hint=f"{APP_SETTING} names the Celery app your workers run, as 'proj.celery:app'.",
        obj=APP_SETTING,
        id="taskguard.E002",
    )
