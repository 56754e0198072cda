"""Calendar quotas: at most N calls per day, week or month, resetting at a clock time.

A GCRA rate limit slides; a quota does not. ``Quota("10000/day", reset="00:00",
tz="Europe/Berlin")`` admits 10,000 calls between two Berlin midnights, then refuses until
the next one (a task defers to the reset). DST is the calendar's business: the worker
computes the window starts around now from its time zone database, and the script picks
the window that holds Redis ``TIME``, so workers' clocks only need to agree within a
period.

This module is the Python side of the guard: the spec and a standalone limiter; its op
and the op's kind in the registry (encoding, memory semantics, undo) are in
:mod:`taskguard.guards.quota_kind`; the Lua side is ``backend/scripts/lib/quota.lua``.
"""

from __future__ import annotations

import inspect
import re
import time as _time
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from datetime import time as clock_time
from typing import Any

from taskguard._validate import allowance, count, text
from taskguard._validate import name as check_name
from taskguard.backend.base import Backend
from taskguard.backend.ops import Op
from taskguard.backend.redis import HasBackend
from taskguard.errors import ConfigurationError, RateLimited
from taskguard.keys import KeySchema

from .admission import admit
from .base import Decision, Guard, check_outage_policy
from .keying import KeyFunc, KeySource, key_text
from .perkey import PerKey
from .quota_kind import QUOTA_GRACE_MS, QuotaOp

__all__ = ["QUOTA_GRACE_MS", "QUOTA_KEY_KIND", "Quota", "QuotaLimiter", "QuotaOp", "window_starts"]

#: The kind code of a quota's keys (``KeySchema.guard(QUOTA_KEY_KIND, name, key)``).
QUOTA_KEY_KIND = "q"

_RESET = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])", re.ASCII)


def window_starts(
    now: float, period: str, reset: clock_time, tz: zoneinfo.ZoneInfo, day: int
) -> tuple[int, ...]:
    """Five consecutive window starts (epoch ms) around ``now``: two before the current
    one, the current one, and two after, in the calendar of ``tz``.

    Example:
        >>> from datetime import time
        >>> from zoneinfo import ZoneInfo
        >>> starts = window_starts(0.0, "day", time(0, 0), ZoneInfo("UTC"), 1)
        >>> [s // 3_600_000 for s in starts]  # hours since the epoch
        [-48, -24, 0, 24, 48]
    """
    local = datetime.fromtimestamp(now, tz)

    def start_of(date: datetime) -> datetime:
        return datetime.combine(date.date(), reset, tzinfo=tz)

    if period == "day":
        current = start_of(local)
        if current > local:
            current = start_of(local - timedelta(days=1))
        dates = [start_of(current + timedelta(days=n)) for n in range(-2, 3)]
    elif period == "week":
        monday = local - timedelta(days=(local.weekday() - day) % 7)
        current = start_of(monday)
        if current > local:
            current = start_of(monday - timedelta(days=7))
        dates = [start_of(current + timedelta(days=7 * n)) for n in range(-2, 3)]
    else:
        year, month = local.year, local.month
        current = datetime.combine(local.date().replace(day=day), reset, tzinfo=tz)
        if current > local:
            year, month = (year, month - 1) if month > 1 else (year - 1, 12)
        dates = []
        for n in range(-2, 3):
            y, m = divmod(year * 12 + month - 1 + n, 12)
            dates.append(datetime(y, m + 1, day, reset.hour, reset.minute, tzinfo=tz))
    return tuple(int(d.timestamp() * 1000) for d in dates)


class Quota(Guard):
    """At most ``limit`` calls per calendar day, week or month, across every worker.

    Args:
        limit: ``"10000/day"``, ``"50000/week"`` or ``"500000/month"``.
        reset: The local clock time the quota resets at, ``"HH:MM"``.
        tz: The IANA time zone of ``reset`` (``"Europe/Berlin"``); DST is handled.
        day: The weekday a weekly quota resets on (0 Monday ... 6 Sunday), or the day of
            the month a monthly one does (1 to 28).
        key: One quota per value of this template over the task's arguments, or a
            callable; ``None`` shares one quota across all calls.
        cost: Calls one run takes.
        name: The quota's name; tasks using one name share it. Defaults to the task name.
        on_outage: ``"allow"`` (default), ``"deny"`` or ``"local"`` while Redis is down.
        per_key: Calls per period for some keys: a mapping of rendered key to a count
            (``{"acme": 50000}``) or a callable taking the key and returning a count or
            ``None`` (this quota's own).

    An allowance set at run time (``taskguard limit set NAME 500/day --kind quota``, or
    :meth:`taskguard.Client.set_quota`) for this quota's period wins over ``limit`` and
    ``per_key``: it is read inside the admission script (docs/quotas.md).

    A refused task defers until the reset (in steps of at most ``max_deferral_delay``;
    raise ``max_deferral_age`` above the period for long waits).

    Example:
        >>> Quota("10000/day", reset="06:00", tz="Europe/Berlin", key="{customer_id}")
        Quota('10000/day', reset='06:00', tz='Europe/Berlin', key='{customer_id}')
    """

    kind = "quota"
    admission_rank = 25
    settings_fields = frozenset(
        {"limit", "reset", "tz", "day", "key", "cost", "name", "on_outage", "per_key"}
    )
    settings_bare = "limit"
    _positional = ("limit",)
    limit: str
    calls: int
    period: str
    reset: str
    tz: str
    day: int
    key: KeyFunc
    cost: int
    name: str | None
    on_outage: str
    per_key: PerKey[int] | None
    _signature: inspect.Signature | None

    def __init__(
        self,
        limit: str,
        *,
        reset: str = "00:00",
        tz: str = "UTC",
        day: int | None = None,
        key: KeySource = None,
        cost: int = 1,
        name: str | None = None,
        on_outage: str = "allow",
        per_key: Mapping[str, int] | Callable[[str | None], Any] | None = None,
    ) -> None:
        calls, period = allowance(limit, "limit")
        if not isinstance(reset, str) or not _RESET.fullmatch(reset):
            raise ConfigurationError(f"must be a time 'HH:MM', got {reset!r}", field="reset")
        try:
            zoneinfo.ZoneInfo(text(tz, "tz"))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigurationError(f"unknown time zone {tz!r}", field="tz") from None
        if day is None:
            day = 1 if period == "month" else 0
        low, high = (1, 28) if period == "month" else (0, 6)
        if isinstance(day, bool) or not isinstance(day, int) or not low <= day <= high:
            raise ConfigurationError(f"must be {low} to {high} for a {period}ly quota", field="day")
        cost = count(cost, "cost")
        if cost > calls:
            raise ConfigurationError(f"cost {cost} exceeds the limit {calls}", field="cost")
        self._set(
            limit=f"{calls}/{period}",
            calls=calls,
            period=period,
            reset=reset,
            tz=tz,
            day=day,
            key=KeyFunc(key),
            cost=cost,
            name=None if name is None else check_name(name, "name"),
            on_outage=check_outage_policy(on_outage),
            per_key=None if per_key is None else PerKey(per_key, count, "per_key"),
            _signature=None,
        )

    def _fields(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "reset": self.reset,
            "tz": self.tz,
            "day": self.day if self.day != (1 if self.period == "month" else 0) else None,
            "key": self.key.source,
            "cost": self.cost,
            "name": self.name,
            "on_outage": self.on_outage,
            "per_key": None if self.per_key is None else self.per_key.source,
        }

    def starts(self, now: float | None = None) -> tuple[int, ...]:
        """The window starts (epoch ms) around ``now`` (default: this host's clock)."""
        hour, minute = (int(part) for part in self.reset.split(":"))
        zone = zoneinfo.ZoneInfo(self.tz)
        when = _time.time() if now is None else now
        return window_starts(when, self.period, clock_time(hour, minute), zone, self.day)

    def bucket(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
        """The quota key for one call."""
        return self.key.render(args, kwargs, self._signature)

    def op(
        self,
        keys: KeySchema,
        bucket: str | None = None,
        cost: int | None = None,
        *,
        now: float | None = None,
    ) -> QuotaOp:
        """The op taking ``cost`` calls (default: the spec's) from ``bucket``'s quota, with
        the window starts around ``now`` (default: this host's clock)."""
        name = self.name or "default"
        return QuotaOp(
            key=keys.guard(QUOTA_KEY_KIND, name, bucket),
            limit=self.calls if self.per_key is None else self.per_key.get(bucket, self.calls),
            cost=self.cost if cost is None else cost,
            starts=self.starts(now),
            period=self.period,
            overrides=keys.quota_overrides(name),
            field="*" if bucket is None else f"k:{bucket}",
        )

    def task_ops(
        self, keys: KeySchema, args: Sequence[Any], kwargs: Mapping[str, Any], task_id: str
    ) -> list[Op]:
        return [self.op(keys, self.bucket(args, kwargs))]

    def denied_error(self, retry_after: float, key: str | None = None) -> RateLimited:
        return RateLimited(
            f"{self!r} used up for key {key!r}; it resets in {retry_after:.0f}s",
            guard=repr(self),
            key=key,
            retry_after=retry_after,
        )


class QuotaLimiter:
    """Runs a :class:`Quota` against a backend, outside of Celery.

    Args:
        backend: A backend, or a client (``taskguard.connect(url)``).
        spec: The quota.

    Example:
        >>> import taskguard
        >>> quota = QuotaLimiter(taskguard.connect("memory://"), Quota("2/day", name="sms"))
        >>> [quota.try_acquire(key="+4411").allowed for _ in range(3)]
        [True, True, False]
        >>> quota.remaining(key="+4411"), quota.remaining(key="+4499")
        (0, 2)
    """

    def __init__(self, backend: Backend | HasBackend, spec: Quota) -> None:
        self.backend = backend if isinstance(backend, Backend) else backend.backend
        self.spec = spec

    def __repr__(self) -> str:
        return f"<QuotaLimiter {self.spec!r} on {self.backend!r}>"

    def try_acquire(self, key: str | int | None = None, cost: int | None = None) -> Decision:
        """Take ``cost`` calls (default: the spec's) from ``key``'s quota if they are left.

        Raises:
            TypeError: ``key`` is not a str, an int or None.
        """
        key = None if key is None else key_text(key)
        clock = getattr(self.backend, "clock", None)  # a memory backend's (fake) clock
        now = clock.time() if clock is not None else None
        op = self.spec.op(self.backend.keys, key, cost, now=now)
        outcome = admit(self.backend, [self.spec], [op])
        result = outcome.admission
        left = result.tokens[0] if result.allowed and result.tokens else 0
        return Decision(
            result.allowed,
            retry_after=result.retry_after,
            remaining=left if not outcome.degraded else -1,
            key=key,
            degraded=outcome.degraded,
        )

    def acquire(self, key: str | int | None = None, cost: int | None = None) -> Decision:
        """Like :meth:`try_acquire`, but a refusal raises.

        Raises:
            RateLimited: The quota is used up until its reset (``retry_after``).
            BackendUnavailable: The backend is down and the policy is ``deny``.
        """
        decision = self.try_acquire(key, cost)
        if decision.allowed:
            return decision
        raise self.spec.refusal(decision.retry_after, decision.key, decision.degraded)

    def remaining(self, key: str | int | None = None) -> int:
        """Calls left in ``key``'s quota in the current window (-1 if unknown: offline)."""
        return self.try_acquire(key, cost=0).remaining
