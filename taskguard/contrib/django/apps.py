"""The Django app: registers taskguard's system check when Django is ready."""

from __future__ import annotations

try:
    from django.apps import AppConfig
    from django.core import checks
except ImportError as exc:  # pragma: no cover - the [django] extra is not installed
    raise ImportError(
        "taskguard.contrib.django needs Django: pip install 'celery-taskguard[django]'"
    ) from exc

from .checks import TAG, check_taskguard

__all__ = ["TaskguardConfig"]


class TaskguardConfig(AppConfig):  # type: ignore[misc]  # Django ships no type hints
    """``INSTALLED_APPS = [..., "taskguard.contrib.django"]``. It has no models."""

    name = "taskguard.contrib.django"
    label = "taskguard"
    verbose_name = "taskguard"

    def ready(self) -> None:
        # The registry keeps a set, so a second ready() (some test setups) adds nothing.
        checks.register(check_taskguard, TAG)
