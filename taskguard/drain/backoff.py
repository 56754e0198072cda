"""Waiting out a failing store: exponential backoff with full jitter, and a sink breaker.

A batch that meets a transient store error is retried, never dropped. Each drain thread
waits ``uniform(0, min(backoff_max, backoff_base * 2**attempt))`` between tries, so threads
that failed together do not retry together. The breaker is shared by every thread writing
to one store: after ``threshold`` consecutive failures it opens, and while it is open the
threads wait instead of hammering the database; when the open time ends one thread writes
a probe batch (half-open) and its outcome closes or re-opens the breaker.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from taskguard.backend.cooldown import CooldownBreaker

__all__ = ["SinkBreaker", "backoff_delay"]


def backoff_delay(
    attempt: int, base: float, maximum: float, rand: Callable[[], float] = random.random
) -> float:
    """The wait before retry number ``attempt`` (0 for the first retry), with full jitter.

    Args:
        attempt: Retries made so far.
        base: The ceiling of the first wait, in seconds.
        maximum: The largest ceiling, in seconds.
        rand: A uniform random number in [0, 1) (injectable for tests).

    Returns:
        Seconds in ``[0, min(maximum, base * 2**attempt))``.
    """
    ceiling = min(maximum, base * 2 ** min(attempt, 62))
    return float(ceiling * rand())


class SinkBreaker(CooldownBreaker):
    """A circuit breaker around one store, shared by the pool's threads.

    A :class:`~taskguard.backend.cooldown.CooldownBreaker` with a fixed open time, whose
    other threads check back every 0.1 s (at most) while the half-open probe is out.

    Args:
        threshold: Consecutive failures that open it.
        open_for: Seconds it stays open before a probe.
        clock: Monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        *,
        threshold: int = 5,
        open_for: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            threshold=threshold,
            cooldown=open_for,
            probe_poll=min(open_for, 0.1),
            clock=clock,
        )

    @property
    def open_for(self) -> float:
        """Seconds it stays open before a probe."""
        return self.cooldown
