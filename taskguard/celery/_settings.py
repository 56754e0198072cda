"""taskguard's settings: read from Celery's config, validated into frozen objects.

Two spellings are read and merged (later wins):

* ``app.conf.taskguard = {...}`` (a dict; Django: ``CELERY_TASKGUARD``),
* flat keys ``taskguard_<field>`` (Django: ``CELERY_TASKGUARD_<FIELD>``).

Per-task entries live under ``tasks``, keyed by exact task name or glob
(``"proj.tasks.send_*"``). Matching entries are merged from least to most specific (globs
by length, then the exact name), and override the task class's ``guards``.

Every invalid value raises :class:`~taskguard.errors.ConfigurationError` naming the task
(or pattern) and the field. See docs/settings.md for every key.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from taskguard._validate import choice, count, flag, import_path, seconds, text
from taskguard._validate import key_prefix as check_prefix
from taskguard.backend.topology import REDIS_SCHEMES
from taskguard.drain.config import DrainSettings
from taskguard.errors import ConfigurationError
from taskguard.guards.base import OUTAGE_POLICIES, Guard, check_outage_policy, guard_classes
from taskguard.guards.breaker import CircuitBreaker
from taskguard.urls import redact

from ._guard_settings import apply_overrides, check_breakers, check_guard_entries
from ._metrics_settings import MetricsSettings
from ._shadow import check_shadow_kinds, split_shadow

__all__ = ["DeferralPolicy", "Settings", "TaskSettings"]

EXHAUSTED_POLICIES = ("fail", "drop", "dead_letter")


def guard_kinds() -> tuple[str, ...]:
    """Every guard kind, in admission order (the settings' outage maps accept these)."""
    classes = guard_classes()
    return tuple(sorted(classes, key=lambda kind: classes[kind].admission_rank))


def _url(value: object) -> str:
    url = text(value, "redis_url")
    if url.split("://", 1)[0].lower() not in (*REDIS_SCHEMES, "memory"):
        raise ConfigurationError(
            "must be a redis://, rediss://, unix://, redis+cluster://, redis+sentinel:// "
            f"or memory:// URL, got {redact(url)!r}",
            field="redis_url",
        )
    return url


def _locations(raw: Mapping[str, Any]) -> dict[str, str]:
    """The settings saying where things are, when set: ``redis_url``, ``celery_app``."""
    found = {}
    if raw.get("redis_url") is not None:
        found["redis_url"] = _url(raw["redis_url"])
    if raw.get("celery_app") is not None:
        found["celery_app"] = import_path(raw["celery_app"], "celery_app")
    return found


def _outage_map(value: object, field_name: str) -> dict[str, str]:
    """``"deny"`` (every guard kind) or ``{"rate_limit": "local", ...}``."""
    if isinstance(value, str):
        return dict.fromkeys(guard_kinds(), check_outage_policy(value, field=field_name))
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"must be one of {', '.join(OUTAGE_POLICIES)} or a mapping of guard kind to "
            f"policy, got {value!r}",
            field=field_name,
        )
    result = {}
    for kind, policy in value.items():
        choice(kind, f"{field_name}.{kind}", guard_kinds())
        result[kind] = check_outage_policy(policy, field=f"{field_name}.{kind}")
    return result


@dataclass(frozen=True, kw_only=True)
class DeferralPolicy:
    """How a denied task comes back later.

    Attributes:
        max_deferrals: Deferrals allowed before the cap policy applies.
        max_age: Seconds since the first deferral before the cap policy applies.
        on_exhausted: ``"fail"`` (the task fails with DeferralExhausted), ``"drop"``
            (logged and signalled, then discarded) or ``"dead_letter"`` (re-published to
            ``dead_letter_queue``, which no worker consumes unless told to).
        dead_letter_queue: Queue for ``dead_letter``.
        jitter: Up to this many seconds are added at random to a non-reserved deferral,
            so denied tasks do not all come back at once.
        max_delay: Longest single deferral; a task needing longer defers again. Keep it
            well below the broker's visibility timeout.
        reserve_within: A rate-limit denial whose wait is at most this many seconds
            reserves its future slot, and the task runs then without contesting again.
            0 disables reservations.
        reservation_grace: How late a reserved task may arrive and still use its slot
            (at least half the bucket's interval). Later, it contests again, so starts
            never bunch up by more than this.
        reservation_lead: A reserved task is sent this many seconds ahead of its slot,
            and waits out what is left of it in the worker (so a pool process busy at the
            slot does not start it late). It holds that process for at most this long.
        park: A task refused by a concurrency cap or a lock is parked in Redis and
            handed back the moment a slot is released (FIFO per key), rather than
            deferred by time. False: defer by time, as other guards do.
    """

    max_deferrals: int = 100
    max_age: float = 3600.0
    on_exhausted: str = "fail"
    dead_letter_queue: str = "taskguard.dead_letter"
    jitter: float = 0.05
    max_delay: float = 300.0
    reserve_within: float = 30.0
    reservation_grace: float = 0.02
    reservation_lead: float = 0.1
    park: bool = True

    #: Setting name -> attribute, for the deferral fields (global and per task).
    SETTING_NAMES: ClassVar[dict[str, str]] = {
        "max_deferrals": "max_deferrals",
        "max_deferral_age": "max_age",
        "on_deferral_exhausted": "on_exhausted",
        "dead_letter_queue": "dead_letter_queue",
        "deferral_jitter": "jitter",
        "max_deferral_delay": "max_delay",
        "reserve_within": "reserve_within",
        "reservation_grace": "reservation_grace",
        "reservation_lead": "reservation_lead",
        "park": "park",
    }

    def updated(self, raw: Mapping[str, Any]) -> DeferralPolicy:
        """A copy with the deferral fields found in ``raw`` (setting names) applied."""
        changes: dict[str, Any] = {}
        for name, attr in self.SETTING_NAMES.items():
            if name not in raw:
                continue
            value = raw[name]
            if attr == "max_deferrals":
                changes[attr] = count(value, name, 0)
            elif attr == "on_exhausted":
                changes[attr] = choice(value, name, EXHAUSTED_POLICIES)
            elif attr == "dead_letter_queue":
                changes[attr] = text(value, name)
            elif attr == "park":
                changes[attr] = flag(value, name)
            else:
                zero_ok = attr in (
                    "jitter",
                    "reserve_within",
                    "reservation_grace",
                    "reservation_lead",
                )
                changes[attr] = seconds(value, name, allow_zero=zero_ok)
        return replace(self, **changes) if changes else self


_GLOBAL_FIELDS = frozenset(
    {
        "redis_url",
        "key_prefix",
        "socket_timeout",
        "socket_connect_timeout",
        "outage_cooldown",
        "redis_options",
        "on_outage",
        "tasks",
        "breakers",
        "enabled",
        "drain",
        "metrics",  # _metrics_settings.py
        "celery_app",  # read by the Django system check (taskguard.contrib.django)
        "events",  # _events_settings.py
        *DeferralPolicy.SETTING_NAMES,
    }
)
_TASK_FIELDS = frozenset(
    {
        "rate_limit_key",
        "burst",
        "cost",
        "on_outage",
        "enabled",
        "shadow",
        *DeferralPolicy.SETTING_NAMES,
    }
)


@dataclass(frozen=True)
class TaskSettings:
    """The effective configuration of one task, after settings were applied.

    Attributes:
        name: The task name.
        guards: The guards to enforce, bound to the task (keys validated).
        deferral: How denials come back.
        enabled: False turns every guard of the task off.
        shadow: Guards evaluated and counted but never enforced (shadow mode).
    """

    name: str
    guards: tuple[Guard, ...]
    deferral: DeferralPolicy
    enabled: bool = True
    shadow: tuple[Guard, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Global taskguard settings. Build with :meth:`from_app` or :meth:`from_mapping`."""

    redis_url: str | None = None
    key_prefix: str = "tg"
    socket_timeout: float = 0.5
    socket_connect_timeout: float = 0.5
    outage_cooldown: float = 0.5
    redis_options: Mapping[str, Any] = field(default_factory=dict)
    on_outage: Mapping[str, str] = field(default_factory=dict)
    deferral: DeferralPolicy = field(default_factory=DeferralPolicy)
    tasks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    breakers: Mapping[str, CircuitBreaker] = field(default_factory=dict)
    enabled: bool = True
    drain: DrainSettings = field(default_factory=DrainSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    celery_app: str | None = None

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Settings:
        """Validate a plain mapping of setting names to values."""
        if not isinstance(raw, Mapping):
            raise ConfigurationError(
                f"must be a mapping, got {type(raw).__name__}", field="taskguard"
            )
        unknown = sorted(set(raw) - _GLOBAL_FIELDS)
        if unknown:
            raise ConfigurationError(
                f"unknown setting {unknown[0]!r}; known: {', '.join(sorted(_GLOBAL_FIELDS))}",
                field=unknown[0],
            )
        values: dict[str, Any] = {"deferral": DeferralPolicy().updated(raw)}
        values.update(_locations(raw))
        if "key_prefix" in raw:
            values["key_prefix"] = check_prefix(raw["key_prefix"])
        for name in ("socket_timeout", "socket_connect_timeout", "outage_cooldown"):
            if name in raw:
                values[name] = seconds(raw[name], name)
        if "redis_options" in raw:
            if not isinstance(raw["redis_options"], Mapping):
                raise ConfigurationError("must be a mapping", field="redis_options")
            values["redis_options"] = dict(raw["redis_options"])
        if "on_outage" in raw:
            values["on_outage"] = _outage_map(raw["on_outage"], "on_outage")
        if "enabled" in raw:
            values["enabled"] = flag(raw["enabled"], "enabled")
        if "tasks" in raw:
            values["tasks"] = _check_tasks(raw["tasks"])
        if "breakers" in raw:
            values["breakers"] = check_breakers(raw["breakers"])
        values["drain"] = DrainSettings.from_mapping(raw.get("drain"))
        values["metrics"] = MetricsSettings.from_mapping(raw.get("metrics"))
        return cls(**values)

    @classmethod
    def from_app(cls, app: Any) -> Settings:
        """Read and validate the settings of a Celery app."""
        return cls.from_conf(app.conf)

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any]) -> Settings:
        """Read and validate the taskguard settings in a configuration mapping, in any of
        the spellings :func:`read_app_config` reads (``app.conf``, or Django's settings)."""
        return cls.from_mapping(read_app_config(conf))

    def for_task(
        self,
        name: str,
        class_guards: Sequence[Guard] = (),
        signature: inspect.Signature | None = None,
        *,
        shadow_guards: Sequence[Guard] = (),
    ) -> TaskSettings:
        """The effective settings of task ``name``: class guards overridden by settings.

        Raises:
            ConfigurationError: Naming ``name`` and the field.
        """
        raw = self._entries_for(name)
        try:
            deferral = self.deferral.updated(raw)
            guards = apply_overrides(list(class_guards), raw, self.on_outage, self.breakers)
            guards, shadow = split_shadow(guards, shadow_guards, raw)
            # Admission order (DESIGN): breaker, lock, concurrency, rate limit, so the
            # first refusal reported is the one that decides how the task waits.
            guards.sort(key=lambda g: g.admission_rank)
            bound = tuple(guard.bind(name, signature) for guard in guards)
            shadowed = tuple(guard.bind(name, signature) for guard in shadow)
        except ConfigurationError as exc:
            raise exc.for_task(name) from None
        enabled = self.enabled and raw.get("enabled", True)
        return TaskSettings(
            name=name, guards=bound, deferral=deferral, enabled=enabled, shadow=shadowed
        )

    def _entries_for(self, name: str) -> dict[str, Any]:
        matches = [p for p in self.tasks if p == name or fnmatch.fnmatchcase(name, p)]
        matches.sort(key=lambda p: (p == name, len(p)))
        merged: dict[str, Any] = {}
        for pattern in matches:
            merged.update(self.tasks[pattern])
        return merged

    def patterns_matching_nothing(self, task_names: Sequence[str]) -> list[str]:
        """Task patterns in ``tasks`` that match none of ``task_names`` (likely typos)."""
        return [
            p
            for p in self.tasks
            if not any(p == n or fnmatch.fnmatchcase(n, p) for n in task_names)
        ]


def read_app_config(conf: Mapping[str, Any]) -> dict[str, Any]:
    """Collect taskguard settings from a Celery ``app.conf`` into one mapping."""
    raw: dict[str, Any] = {}
    for key in ("taskguard", "TASKGUARD", "CELERY_TASKGUARD"):
        value = conf.get(key)
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise ConfigurationError(f"must be a mapping, got {type(value).__name__}", field=key)
        raw.update(value)
    for key in list(conf.keys()):
        lowered = str(key).lower()
        lowered = lowered.removeprefix("celery_")
        if lowered.startswith("taskguard_"):
            raw[lowered[len("taskguard_") :]] = conf[key]
    return raw


def _check_tasks(value: object) -> dict[str, dict[str, Any]]:
    if not isinstance(value, Mapping):
        raise ConfigurationError("must map task names or globs to settings", field="tasks")
    checked: dict[str, dict[str, Any]] = {}
    for pattern, entry in value.items():
        if not isinstance(pattern, str) or not pattern:
            raise ConfigurationError(
                f"task pattern must be a string, got {pattern!r}", field="tasks"
            )
        try:
            checked[pattern] = _check_task_entry(entry)
        except ConfigurationError as exc:
            raise exc.for_task(pattern) from None
    return checked


def _check_task_entry(entry: object) -> dict[str, Any]:
    """Type-check one ``tasks`` entry; guards are built (and re-checked) per task."""
    if not isinstance(entry, Mapping):
        raise ConfigurationError(f"must be a mapping, got {type(entry).__name__}", field="tasks")
    known = _TASK_FIELDS | set(guard_kinds())
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ConfigurationError(
            f"unknown setting {unknown[0]!r}; known: {', '.join(sorted(known))}",
            field=unknown[0],
        )
    entry = dict(entry)
    DeferralPolicy().updated(entry)
    if "enabled" in entry:
        flag(entry["enabled"], "enabled")
    if "on_outage" in entry:
        entry["on_outage"] = _outage_map(entry["on_outage"], "on_outage")
    if "shadow" in entry:
        entry["shadow"] = check_shadow_kinds(entry["shadow"])
    check_guard_entries(entry)
    return entry
