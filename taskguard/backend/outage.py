"""A per-process breaker around the backend itself.

After a connection failure, calls fail fast with :class:`BackendUnavailable` for a cooldown
that doubles on each consecutive failure (up to a cap), so a dead Redis costs a task a few
microseconds rather than a socket timeout. After the cooldown one caller probes; success
closes the breaker.
"""

from __future__ import annotations

import threading
import time as _time
from collections.abc import Callable

from taskguard.errors import BackendUnavailable

__all__ = ["OutageBreaker"]


class OutageBreaker:
    """Fail fast while the backend is known to be down.

    Args:
        cooldown: Seconds to fail fast after the first failure.
        max_cooldown: Upper bound for the doubling cooldown.
        clock: Monotonic clock (injectable for tests).
    """

    def __init__(
        self,
        *,
        cooldown: float = 0.5,
        max_cooldown: float = 10.0,
        clock: Callable[[], float] = _time.monotonic,
    ) -> None:
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until = 0.0

    @property
    def is_open(self) -> bool:
        """True while calls are being failed fast."""
        return self._failures > 0 and self._clock() < self._open_until

    def before_call(self) -> None:
        """Raise :class:`BackendUnavailable` if the breaker is open; let one probe through.

        While a probe is in flight other callers keep failing fast: the probe pushes the
        open window forward by one cooldown before it goes out.
        """
        if self._failures == 0:
            return
        with self._lock:
            now = self._clock()
            if now < self._open_until:
                raise BackendUnavailable(
                    "backend unavailable (failing fast after a recent connection error)",
                    retry_after=self._open_until - now,
                )
            self._open_until = now + self._current_cooldown()

    def record_success(self) -> None:
        """Close the breaker."""
        if self._failures:  # the common case costs one attribute read
            with self._lock:
                self._failures = 0
                self._open_until = 0.0

    def record_failure(self) -> float:
        """Open (or keep open) the breaker; returns the cooldown in seconds."""
        with self._lock:
            self._failures += 1
            cooldown = self._current_cooldown()
            self._open_until = self._clock() + cooldown
            return cooldown

    def reset(self) -> None:
        """Forget every failure (used after fork)."""
        with self._lock:
            self._failures = 0
            self._open_until = 0.0

    def _current_cooldown(self) -> float:
        return float(min(self.max_cooldown, self.cooldown * 2 ** max(self._failures - 1, 0)))
