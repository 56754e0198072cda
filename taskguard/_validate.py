"""The validators every setting and guard option goes through.

Each takes the value, the field it came from and, when the caller knows it, the task; it
returns the value in its checked form, or raises
:class:`~taskguard.errors.ConfigurationError` naming the field (and the task)::

    >>> seconds(timedelta(minutes=2), "ttl")
    120.0
    >>> count(0, "burst")
    Traceback (most recent call last):
    ...
    taskguard.errors.ConfigurationError: [field 'burst'] must be a positive integer, got 0

The messages are those docs/settings.md lists; keep the two in step.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import timedelta

from taskguard.errors import ConfigurationError
from taskguard.units import MAX_COUNT, Rate, parse_duration, parse_rate

__all__ = [
    "MAX_NAME_LENGTH",
    "PERIODS",
    "allowance",
    "choice",
    "count",
    "flag",
    "import_path",
    "key_prefix",
    "name",
    "number",
    "rate",
    "seconds",
    "text",
]

#: The longest guard, breaker, lock or semaphore name, and key prefix (in characters).
MAX_NAME_LENGTH = 200


def seconds(
    value: object, field: str, *, allow_zero: bool = False, task: str | None = None
) -> float:
    """A duration, given as seconds (int or float) or a :class:`~datetime.timedelta`.

    Args:
        value: The value to check.
        field: The setting it came from, named by the error.
        allow_zero: Accept 0 (otherwise the duration must be positive).
        task: The task the setting belongs to, if known.

    Returns:
        The duration in seconds.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, timedelta)):
        raise ConfigurationError(
            f"must be seconds (a number) or a timedelta, got {type(value).__name__}",
            field=field,
            task=task,
        )
    try:
        return parse_duration(value, allow_zero=allow_zero)
    except ValueError:
        bound = "zero or more" if allow_zero else "positive"
        raise ConfigurationError(
            f"must be {bound} seconds, got {value!r}", field=field, task=task
        ) from None


def count(value: object, field: str, minimum: int = 1, *, task: str | None = None) -> int:
    """An integer from ``minimum`` to :data:`~taskguard.units.MAX_COUNT` (2**53, the
    largest integer the Lua scripts' numbers hold exactly); a bool is not an integer here."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigurationError(f"must be {wanted}, got {value!r}", field=field, task=task)
    if value > MAX_COUNT:
        raise ConfigurationError(
            f"must be at most 2**53 ({MAX_COUNT}), got {value!r}", field=field, task=task
        )
    return value


def number(
    value: object,
    field: str,
    low: float,
    high: float | None = None,
    *,
    task: str | None = None,
) -> float:
    """A finite number in ``[low, high]`` (``high=None``: no upper bound)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"must be a finite number, got {value!r}", field=field, task=task)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigurationError(f"must be {bound}, got {value!r}", field=field, task=task)
    return float(value)


def choice(value: object, field: str, choices: Sequence[str], *, task: str | None = None) -> str:
    """One of ``choices``."""
    if value not in choices:
        raise ConfigurationError(
            f"must be one of {', '.join(choices)}, got {value!r}", field=field, task=task
        )
    return str(value)


def flag(value: object, field: str, *, task: str | None = None) -> bool:
    """``True`` or ``False`` (not 1, not ``"yes"``)."""
    if not isinstance(value, bool):
        raise ConfigurationError(f"must be true or false, got {value!r}", field=field, task=task)
    return value


def text(value: object, field: str, *, task: str | None = None) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise ConfigurationError(
            f"must be a non-empty string, got {value!r}", field=field, task=task
        )
    return value


_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def import_path(value: object, field: str, *, task: str | None = None) -> str:
    """Where to import an object from: ``"package.module:attribute"`` (or, as Django
    writes them, ``"package.module.attribute"``)."""
    path = text(value, field, task=task)
    module, colon, attribute = path.partition(":")
    parts_ok = all(_IMPORT_PATH.fullmatch(part) for part in (module, attribute) if part or colon)
    if not parts_ok or not (colon or "." in module):
        raise ConfigurationError(
            f"must be an import path such as 'proj.celery:app', got {path!r}",
            field=field,
            task=task,
        )
    return path


def name(value: object, field: str, *, task: str | None = None) -> str:
    """A guard, breaker, lock or semaphore name: a non-empty string of at most
    :data:`MAX_NAME_LENGTH` characters (any characters: keys.py escapes them)."""
    checked = text(value, field, task=task)
    if len(checked) > MAX_NAME_LENGTH:
        raise ConfigurationError(
            f"must be at most {MAX_NAME_LENGTH} characters, got {len(checked)}",
            field=field,
            task=task,
        )
    return checked


def key_prefix(value: object, field: str = "key_prefix", *, task: str | None = None) -> str:
    """The namespace of every Redis key: a :func:`name` without braces (a hash tag),
    whitespace or control characters, since it is written into keys as it is."""
    prefix = name(value, field, task=task)
    bad = next((c for c in prefix if c in "{}" or c.isspace() or not c.isprintable()), None)
    if bad is not None:
        raise ConfigurationError(
            f"invalid key prefix {prefix!r}: it must be without braces, whitespace or "
            f"control characters (found {bad!r})",
            field=field,
            task=task,
        )
    return prefix


def rate(value: object, field: str, *, task: str | None = None) -> Rate:
    """A rate: ``"10/s"``, ``"100/m"``, ``"5000/h"``, ``"1/d"`` (or a :class:`Rate`)."""
    try:
        return parse_rate(value)  # type: ignore[arg-type]  # parse_rate rejects the rest
    except ValueError as exc:
        raise ConfigurationError(str(exc), field=field, task=task) from None


#: The periods of a calendar quota.
PERIODS = ("day", "week", "month")
# ASCII digits only, nothing before or after (fullmatch: "$" would let a "\n" through).
_ALLOWANCE = re.compile(r"([0-9]+) */ *(day|d|week|w|month|mo)", re.ASCII)
_PERIOD_UNITS = {"d": "day", "w": "week", "mo": "month"}


def allowance(value: object, field: str, *, task: str | None = None) -> tuple[int, str]:
    """A quota's calls per period: ``"10000/day"``, ``"500/week"``, ``"9000/month"``
    (``d``, ``w``, ``mo`` too) as ``(calls, period)``.

    Example:
        >>> allowance("500 / w", "limit")
        (500, 'week')
    """
    match = _ALLOWANCE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigurationError(
            f"must be calls per day, week or month, like '10000/day', got {value!r}",
            field=field,
            task=task,
        )
    calls = count(int(match.group(1)), field, task=task)
    return calls, _PERIOD_UNITS.get(match.group(2), match.group(2))
