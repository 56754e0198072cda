"""The run-time limit methods of :class:`taskguard.Client`: set, clear and list the rates,
slot counts and allowances an operator sets while the fleet runs (``taskguard limit``),
each change published as a ``limit_changed`` guard event.

The storage, and what each admission script reads, is :mod:`taskguard.backend.limits`.
"""

from __future__ import annotations

import getpass
from typing import Any

from taskguard._validate import allowance, choice, count
from taskguard._validate import rate as check_rate
from taskguard.backend import Backend
from taskguard.backend import limits as run_time
from taskguard.backend.limits import CapOverride, LimitOverride, QuotaOverride
from taskguard.errors import ConfigurationError
from taskguard.events import publish_event
from taskguard.units import Rate

__all__ = ["KINDS", "RunTimeLimits", "clear_of_kind", "scope", "set_of_kind"]

#: The kinds of limit set at run time, and what each is called in messages.
KINDS = {"rate": "rate limit", "cap": "concurrency cap", "quota": "quota"}
#: What a kind's value is called in messages.
VALUES = {"rate": "rate", "cap": "slot count", "quota": "allowance"}


class RunTimeLimits:
    """Limits set at run time on ``self.backend`` (a mixin of :class:`taskguard.Client`)."""

    backend: Backend

    def set_limit(
        self, name: str, rate: str | Rate, *, burst: int = 1, key: str | None = None
    ) -> None:
        """Set rate limiter ``name``'s rate at run time, for bucket ``key`` or all of them.

        Every worker applies it within a second, this process at once (it is read inside
        the admission script), until :meth:`clear_limit`. A bucket's own rate wins over
        the all-buckets one, so per-tenant limits can be kept here:
        ``client.set_limit("api", "100/s", key="premium-customer")``. Same as
        ``taskguard limit set``.

        Example:
            >>> import taskguard
            >>> client = taskguard.connect("memory://")
            >>> client.set_limit("api", "50/s", burst=5)
            >>> client.limits("api")[0].burst
            5
        """
        parsed = check_rate(rate, "rate")
        run_time.set_limit(self.backend, name, parsed, burst=burst, key=key)
        self._changed("rate", name, "set", key, rate=str(parsed), burst=burst)

    def clear_limit(self, name: str, *, key: str | None = None) -> bool:
        """Remove a rate set with :meth:`set_limit`; True if one was set."""
        return self._cleared("rate", name, key, run_time.clear_limit(self.backend, name, key=key))

    def limits(self, name: str) -> list[LimitOverride]:
        """The rates set at run time for rate limiter ``name``."""
        return run_time.limits_of(self.backend, name)

    def set_cap(self, name: str, limit: int, *, key: str | None = None) -> None:
        """Set concurrency cap ``name``'s slot count at run time, for cap key ``key`` or
        all of them: it wins over the code's ``limit`` and ``per_key`` until
        :meth:`clear_cap`, read inside the admission script (and by parked tasks' hand-
        backs). Lowered, no one new starts until the holders fall below it. Same as
        ``taskguard limit set NAME LIMIT --kind cap``.

        Example:
            >>> import taskguard
            >>> client = taskguard.connect("memory://")
            >>> client.set_cap("exports", 1)
            >>> heavy = client.semaphore("exports", limit=5)
            >>> with heavy.acquire(timeout=1):
            ...     heavy.try_acquire().allowed
            False
        """
        limit = count(limit, "limit")
        run_time.set_cap(self.backend, name, limit, key=key)
        self._changed("cap", name, "set", key, limit=str(limit))

    def clear_cap(self, name: str, *, key: str | None = None) -> bool:
        """Remove a slot count set with :meth:`set_cap`; True if one was set."""
        return self._cleared("cap", name, key, run_time.clear_cap(self.backend, name, key=key))

    def caps(self, name: str) -> list[CapOverride]:
        """The slot counts set at run time for concurrency cap ``name``."""
        return run_time.caps_of(self.backend, name)

    def set_quota(self, name: str, limit: str, *, key: str | None = None) -> None:
        """Set calendar quota ``name``'s allowance at run time (``"500/day"``), for quota
        key ``key`` or all of them: it wins over the code's and ``per_key`` until
        :meth:`clear_quota`, for a quota of that period (a daily allowance is ignored by
        a monthly quota). Calls already used in the window still count. Same as
        ``taskguard limit set NAME 500/day --kind quota``.

        Example:
            >>> import taskguard
            >>> client = taskguard.connect("memory://")
            >>> client.set_quota("sms", "1/day", key="+4411")
            >>> str(client.quotas("sms")[0])
            '1/day'
        """
        calls, period = allowance(limit, "limit")
        run_time.set_quota(self.backend, name, calls, period, key=key)
        self._changed("quota", name, "set", key, limit=f"{calls}/{period}")

    def clear_quota(self, name: str, *, key: str | None = None) -> bool:
        """Remove an allowance set with :meth:`set_quota`; True if one was set."""
        removed = run_time.clear_quota(self.backend, name, key=key)
        return self._cleared("quota", name, key, removed)

    def quotas(self, name: str) -> list[QuotaOverride]:
        """The allowances set at run time for quota ``name``."""
        return run_time.quotas_of(self.backend, name)

    def _changed(self, kind: str, name: str, action: str, key: str | None, **new: Any) -> None:
        publish_event(
            self.backend,
            "limit_changed",
            name=name,
            action=action,
            key=key,
            kind=kind,
            user=_user(),
            **new,
        )

    def _cleared(self, kind: str, name: str, key: str | None, removed: bool) -> bool:
        if removed:
            self._changed(kind, name, "clear", key)
        return removed


def scope(kind: str, key: str | None) -> str:
    """Which keys a change covers, in a kind's words: a rate limiter's buckets, or keys."""
    if kind == "rate":
        return "every bucket" if key is None else f"bucket {key!r}"
    return "every key" if key is None else f"key {key!r}"


def _integer(value: str) -> bool:
    return value.strip().isascii() and value.strip().isdigit()


def set_of_kind(
    limits: RunTimeLimits, kind: str, name: str, value: str, *, key: str | None, burst: int = 1
) -> str:
    """Set ``name``'s limit of ``kind`` (``rate``, ``cap``, ``quota``) from ``value`` as an
    operator types it; returns how the new limit reads. The one parser behind
    ``taskguard limit set`` and the ``taskguard_limit_set`` control command.

    Raises:
        ConfigurationError: an unknown kind, a value that is not one of the kind's, or a
            burst given for a cap or a quota (field ``kind``, ``value`` or ``burst``).

    Example:
        >>> import taskguard
        >>> set_of_kind(taskguard.connect("memory://"), "cap", "exports", "3", key=None)
        '3 slots'
    """
    kind = choice(kind, "kind", tuple(KINDS))
    if kind == "rate":
        if _integer(value):
            raise ConfigurationError(
                f"{value!r} is a number, not a rate like '100/s': for a concurrency cap's "
                "slot count give the kind cap (--kind cap)",
                field="value",
            )
        parsed = check_rate(value, "rate")
        limits.set_limit(name, parsed, burst=burst, key=key)
        return f"{parsed} (burst {burst})"
    if burst != 1:
        raise ConfigurationError(f"only a rate has a burst, not a {kind}", field="burst")
    if kind == "cap":
        if not _integer(value):
            raise ConfigurationError(
                f"a cap's slot count is a positive integer, got {value!r}", field="value"
            )
        slots = count(int(value), "limit")
        limits.set_cap(name, slots, key=key)
        return f"{slots} slot{'s' if slots != 1 else ''}"
    calls, period = allowance(value, "limit")
    limits.set_quota(name, f"{calls}/{period}", key=key)
    return f"{calls}/{period}"


def clear_of_kind(limits: RunTimeLimits, kind: str, name: str, *, key: str | None) -> bool:
    """Remove ``name``'s limit of ``kind`` set at run time; True if one was set.

    Raises:
        ConfigurationError: an unknown kind (field ``kind``).
    """
    clear = {"rate": limits.clear_limit, "cap": limits.clear_cap, "quota": limits.clear_quota}
    return clear[choice(kind, "kind", tuple(KINDS))](name, key=key)


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in this environment
        return None
