"""The run-time limit methods of :class:`taskguard.Client`: set, clear and list the rates,
slot counts and allowances an operator sets while the fleet runs (``taskguard limit``),
each change published as a ``limit_changed`` guard event.

The storage, and what each admission script reads, is :mod:`taskguard.backend.limits`.
"""

from __future__ import annotations

import getpass
from typing import Any

from taskguard._validate import allowance, count
from taskguard._validate import rate as check_rate
from taskguard.backend import Backend
from taskguard.backend import limits as run_time
from taskguard.backend.limits import CapOverride, LimitOverride, QuotaOverride
from taskguard.events import publish_event
from taskguard.units import Rate

__all__ = ["RunTimeLimits"]


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


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in this environment
        return None
