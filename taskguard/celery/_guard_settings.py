"""Guards built from settings: a task's ``rate_limit``, ``lock``, ``concurrency`` and
``circuit_breaker`` entries, and the global ``breakers`` table.

Settings override the task class's guards: an entry replaces the class's guards of its
kind (null removes them), shorthands and outage policies tweak them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from taskguard.errors import ConfigurationError
from taskguard.guards.base import Guard, guard_classes
from taskguard.guards.breaker_spec import CircuitBreaker
from taskguard.guards.ratelimit import RateLimit

__all__ = ["apply_overrides", "check_breakers", "check_guard_entries"]

_RATE_DICT_FIELDS = frozenset({"rate", "key", "burst", "cost", "name", "on_outage", "tag"})
#: Per-task settings that apply to each of the task's rate limits -> RateLimit argument.
_RATE_SHORTHANDS = {"rate_limit_key": "key", "burst": "burst", "cost": "cost"}


def _rate_limit_fields(entry: Mapping[str, Any], on_outage: Mapping[str, str]) -> dict[str, Any]:
    """The RateLimit keyword arguments an entry sets for every rate limit of its task."""
    fields = {
        name: entry[setting] for setting, name in _RATE_SHORTHANDS.items() if setting in entry
    }
    if "rate_limit" in on_outage:
        fields["on_outage"] = on_outage["rate_limit"]
    return fields


def _rate_limits_from(
    entry: Mapping[str, Any], on_outage: Mapping[str, str]
) -> list[RateLimit] | None:
    """The rate limits an entry defines, or None when it leaves the class's alone."""
    common = _rate_limit_fields(entry, on_outage)
    if "rate_limit" not in entry:
        if common:
            # Type-check the shorthands now; cost against burst is checked per task, with
            # the burst (and rate) of the class's limits they tweak.
            RateLimit("1000000/s", **{"burst": 10**9, **common})
        return None
    value = entry["rate_limit"]
    if value is None or value is False:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    limits = []
    for item in items:
        if isinstance(item, Mapping):
            unknown = sorted(set(item) - _RATE_DICT_FIELDS)
            if unknown:
                raise ConfigurationError(
                    f"unknown rate limit field {unknown[0]!r}; known: "
                    f"{', '.join(sorted(_RATE_DICT_FIELDS))}",
                    field=f"rate_limit.{unknown[0]}",
                )
            if "rate" not in item:
                raise ConfigurationError("a rate limit mapping needs 'rate'", field="rate_limit")
            limits.append(RateLimit(**{**common, **item}))
        elif isinstance(item, str):
            limits.append(RateLimit(item, **common))
        else:
            raise ConfigurationError(
                f"must be a rate like '10/s', a mapping or a list of them, got {item!r}",
                field="rate_limit",
            )
    return limits


def _guard_settings() -> dict[str, type[Guard]]:
    """Setting -> guard class, for every guard kind that declares its settings fields."""
    return {kind: cls for kind, cls in guard_classes().items() if cls.settings_fields}


def _guard_from(
    entry: Mapping[str, Any], setting: str, on_outage: Mapping[str, str]
) -> list[Guard] | None:
    """The guard an entry's ``lock`` / ``concurrency`` / ... defines, or None to keep the
    class's.

    The value is a mapping of the guard's arguments, null to remove the class's guard, or
    a bare value for a kind that has one (``"concurrency": 3``).
    """
    if setting not in entry:
        return None
    value = entry[setting]
    if value is None or value is False:
        return []
    cls = _guard_settings()[setting]
    accepted = cls.settings_fields or frozenset()
    if cls.settings_bare is not None and not isinstance(value, Mapping):
        value = {cls.settings_bare: value}
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"must be a mapping of {cls.__name__} arguments or null, got {value!r}",
            field=setting,
        )
    unknown = sorted(set(value) - accepted)
    if unknown:
        raise ConfigurationError(
            f"unknown {setting} field {unknown[0]!r}; known: {', '.join(sorted(accepted))}",
            field=f"{setting}.{unknown[0]}",
        )
    fields = dict(value)
    if setting in on_outage:
        fields.setdefault("on_outage", on_outage[setting])
    return [_build(cls, setting, **fields)]


def apply_overrides(
    guards: list[Guard],
    raw: Mapping[str, Any],
    global_outage: Mapping[str, str],
    breakers: Mapping[str, CircuitBreaker],
) -> list[Guard]:
    """Settings replace the class's guards of a kind, or tweak them (shorthands, outage).

    A class-level CircuitBreaker whose name is in the ``breakers`` table takes its
    options from there.
    """
    outage = {**global_outage, **raw.get("on_outage", {})}
    guards = [
        breakers[g.name] if isinstance(g, CircuitBreaker) and g.name in breakers else g
        for g in guards
    ]
    replacement = _breaker_from(raw, outage, breakers)
    if replacement is not None:
        guards = [*(g for g in guards if not isinstance(g, CircuitBreaker)), *replacement]
    elif "circuit_breaker" in outage:
        guards = [
            g.replace(on_outage=outage["circuit_breaker"]) if isinstance(g, CircuitBreaker) else g
            for g in guards
        ]
    for setting, cls in _guard_settings().items():
        replacement = _guard_from(raw, setting, outage)
        if replacement is not None:
            guards = [*(g for g in guards if not isinstance(g, cls)), *replacement]
        elif setting in outage:
            guards = [
                g.replace(on_outage=outage[setting]) if isinstance(g, cls) else g for g in guards
            ]
    limits = _rate_limits_from(raw, outage)
    if limits is not None:
        return [g for g in guards if not isinstance(g, RateLimit)] + limits
    tweak = _rate_limit_fields(raw, outage)
    if not tweak:
        return guards
    return [g.replace(**tweak) if isinstance(g, RateLimit) else g for g in guards]


def check_breakers(value: object) -> dict[str, CircuitBreaker]:
    """Validate the global ``breakers`` table: breaker name -> CircuitBreaker options."""
    if not isinstance(value, Mapping):
        raise ConfigurationError("must map breaker names to options", field="breakers")
    checked = {}
    for name, options in value.items():
        if not isinstance(options, Mapping):
            raise ConfigurationError(
                f"must be a mapping of CircuitBreaker options, got {options!r}",
                field=f"breakers.{name}",
            )
        checked[name] = _build(CircuitBreaker, f"breakers.{name}", name=name, **options)
    return checked


def _build(cls: type[Guard], setting: str, **fields: Any) -> Any:
    try:
        return cls(**fields)
    except ConfigurationError as exc:
        raise ConfigurationError(exc.reason, field=f"{setting}.{exc.field}") from None
    except TypeError as exc:  # an unknown or missing argument
        raise ConfigurationError(str(exc).split(") ", 1)[-1], field=setting) from None


def _breaker_from(
    entry: Mapping[str, Any], on_outage: Mapping[str, str], table: Mapping[str, CircuitBreaker]
) -> list[Guard] | None:
    """A task's ``circuit_breaker``: a name (options from ``breakers``), a mapping with a
    ``name``, or null to remove the class's breakers."""
    if "circuit_breaker" not in entry:
        return None
    value = entry["circuit_breaker"]
    if value is None or value is False:
        return []
    if isinstance(value, str):
        breaker = table.get(value) or _build(CircuitBreaker, "circuit_breaker", name=value)
    elif isinstance(value, Mapping) and "name" in value:
        breaker = _build(CircuitBreaker, "circuit_breaker", **value)
    else:
        raise ConfigurationError(
            f"must be a breaker name, a mapping with a 'name', or null, got {value!r}",
            field="circuit_breaker",
        )
    if "circuit_breaker" in on_outage:
        breaker = breaker.replace(on_outage=on_outage["circuit_breaker"])
    return [breaker]


def check_guard_entries(entry: Mapping[str, Any]) -> None:
    """Build a task entry's guards once, so errors surface when settings are read."""
    _rate_limits_from(entry, {})
    for setting in _guard_settings():
        _guard_from(entry, setting, {})
    _breaker_from(entry, {}, {})
