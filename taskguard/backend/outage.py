"""A per-process breaker around the backend itself.

After a connection failure, calls fail fast with :class:`BackendUnavailable` for a cooldown
that doubles on each consecutive failure (up to a cap), so a dead Redis costs a task a few
microseconds rather than a socket timeout. After the cooldown one caller probes; success
closes the breaker.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable

from taskguard.errors import BackendUnavailable

from .cooldown import CooldownBreaker

__all__ = ["OutageBreaker"]


class OutageBreaker(CooldownBreaker):
    """Fail fast while the backend is known to be down.

    A :class:`~taskguard.backend.cooldown.CooldownBreaker` that opens on the first failure,
    and whose :meth:`before_call` raises instead of returning a wait.

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
        super().__init__(threshold=1, cooldown=cooldown, max_cooldown=max_cooldown, clock=clock)

    def before_call(self) -> None:
        """Raise :class:`BackendUnavailable` if the breaker is open; let one probe through.

        While a probe is in flight other callers keep failing fast for one cooldown.
        """
        if not self.failures:  # the hot path: one attribute read
            return
        wait = self.wait_time()
        if wait > 0:
            raise BackendUnavailable(
                "backend unavailable (failing fast after a recent connection error)",
                retry_after=wait,
            )
