"""Rates and durations as users write them, parsed into exact values.

Rates read ``"10/s"``, ``"100/m"``, ``"5000/h"``, ``"1000/d"``; a multiplier is allowed in
the period (``"30/5m"``) and the long unit names too (``"10/second"``). Durations take
seconds (int or float) or a :class:`datetime.timedelta`.

Counts and rates are bounded so the Lua scripts compute with them exactly (Lua numbers
are doubles: integers are exact up to 2**53):

* every count (a rate's limit, a burst, a cost, a quota) is at most :data:`MAX_COUNT`;
* a rate's emission interval (seconds per call) is from :data:`MIN_INTERVAL` (1 µs: a
  million calls per second per bucket, more than one Redis key serves) to
  :data:`MAX_INTERVAL` (one year per call), so in microseconds it is a modest double;
* a bucket refills within :data:`MAX_BUCKET_SPAN` (burst x interval <= 100 years).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import timedelta

__all__ = [
    "MAX_BUCKET_SPAN",
    "MAX_COUNT",
    "MAX_INTERVAL",
    "MIN_INTERVAL",
    "Rate",
    "parse_duration",
    "parse_rate",
]

#: The largest count (limit, burst, cost): 2**53, the last integer a double holds exactly.
MAX_COUNT = 2**53
#: The shortest emission interval, in seconds: one call per microsecond.
MIN_INTERVAL = 1e-6  # checked as period * 1_000_000 >= limit, exactly
#: The longest emission interval, in seconds: one call per (365-day) year.
MAX_INTERVAL = 365 * 86400
#: The longest a bucket takes to refill (burst x interval), in seconds: 100 years. A
#: bucket's state is a time in microseconds since the epoch, at most now + this + a
#: reservation (acquire() reserves up to 1e9 s ahead): that stays below 2**53 µs (year
#: 2255), where a double still counts every microsecond.
MAX_BUCKET_SPAN = 100 * MAX_INTERVAL

_UNIT_SECONDS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
}
# ASCII digits only (\d would take Arabic-Indic ones), spaces only around the slash, nothing after.
_RATE_RE = re.compile(r"([0-9]+) */ *([0-9]*) *([a-z]+)", re.ASCII)


@dataclass(frozen=True)
class Rate:
    """``limit`` events per ``period`` seconds.

    Attributes:
        limit: Events allowed per period (a positive integer).
        period: Length of the period in seconds (positive).
    """

    limit: int
    period: float

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit <= 0:
            raise ValueError(f"rate limit must be a positive integer, got {self.limit!r}")
        if not (isinstance(self.period, (int, float)) and math.isfinite(self.period)):
            raise ValueError(f"rate period must be a finite number, got {self.period!r}")
        if self.period <= 0:
            raise ValueError(f"rate period must be positive, got {self.period!r}")
        if self.limit > MAX_COUNT:
            raise ValueError(f"rate limit must be at most 2**53 ({MAX_COUNT}), got {self.limit}")
        if self.period * 1_000_000 < self.limit:  # an interval below MIN_INTERVAL
            raise ValueError(
                f"rate '{self}' is too fast: at most 1000000 calls per second per bucket"
            )
        if self.period > self.limit * MAX_INTERVAL:
            raise ValueError(
                f"rate '{self}' is too slow: at least one call per 365 days "
                f"({MAX_INTERVAL} s per call), got {self.interval:g} s per call"
            )

    @property
    def interval(self) -> float:
        """Seconds between two events at a steady pace (the GCRA emission interval)."""
        return self.period / self.limit

    @property
    def per_second(self) -> float:
        """The rate in events per second."""
        return self.limit / self.period

    def __str__(self) -> str:
        for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
            count = self.period / seconds
            if count == int(count) and count >= 1:
                return f"{self.limit}/{'' if count == 1 else int(count)}{unit}"
        return f"{self.limit}/{self.period}s"


def parse_rate(value: str | Rate) -> Rate:
    """Parse ``"N/unit"`` (or ``"N/Kunit"``) into a :class:`Rate`.

    Raises:
        ValueError: If the text is not a rate. The message shows the accepted forms.

    Example:
        >>> parse_rate("100/m")
        Rate(limit=100, period=60)
        >>> parse_rate("30/5m").interval
        10.0
    """
    if isinstance(value, Rate):
        return value
    if not isinstance(value, str):
        raise ValueError(f"a rate must be a string like '10/s', got {type(value).__name__}")
    match = _RATE_RE.fullmatch(value.lower()) if value.isascii() else None
    if not match or match.group(3) not in _UNIT_SECONDS:
        raise ValueError(
            f"invalid rate {value!r}: expected 'N/s', 'N/m', 'N/h' or 'N/d' (e.g. '10/s', '30/5m')"
        )
    count, multiplier, unit = match.groups()
    factor = int(multiplier) if multiplier else 1
    if factor <= 0:
        raise ValueError(f"invalid rate {value!r}: the period multiplier must be positive")
    if int(count) <= 0:
        raise ValueError(f"invalid rate {value!r}: the count must be positive")
    return Rate(int(count), factor * _UNIT_SECONDS[unit])


def parse_duration(value: float | timedelta, *, allow_zero: bool = False) -> float:
    """Return ``value`` in seconds, validating that it is a non-negative finite number.

    Raises:
        ValueError: If the value is not a number or timedelta, or is negative/zero/infinite.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ValueError(f"a duration must be seconds or a timedelta, got {type(value).__name__}")
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise ValueError(f"a duration must be {bound} and finite, got {value!r}")
    return seconds
