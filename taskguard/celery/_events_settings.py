"""The ``events`` setting: whether a worker publishes its guard events.

``app.conf.taskguard["events"] = False`` turns them off (docs/settings.md, ``events``).
Validated when the worker starts, like every setting: a value that is not a bool raises
:class:`~taskguard.errors.ConfigurationError` naming the field (``"events"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from taskguard._validate import flag

from ._settings import read_app_config

__all__ = ["EventsSettings"]


@dataclass(frozen=True, kw_only=True)
class EventsSettings:
    """Whether a worker publishes guard events (:mod:`taskguard.events`).

    Attributes:
        enabled: Publish them (the default): a breaker's transition, a lost lease, a
            dead letter or an exhausted deferral cap costs one ``PUBLISH``; admission and
            release never publish.
    """

    enabled: bool = True

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> EventsSettings:
        """Read ``events`` from the taskguard settings ``raw`` (missing or None: on).

        Raises:
            ConfigurationError: Naming the field ``events``.
        """
        value = raw.get("events")
        return cls() if value is None else cls(enabled=flag(value, "events"))

    @classmethod
    def from_app(cls, app: Any) -> EventsSettings:
        """Read ``events`` from a Celery app's taskguard settings."""
        return cls.from_mapping(read_app_config(app.conf))
