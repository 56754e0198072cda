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
import threading
import time
from collections.abc import Callable

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


class SinkBreaker:
    """A circuit breaker around one store, shared by the pool's threads.

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
        self.threshold = threshold
        self.open_for = open_for
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until = 0.0
        self._probing = False

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open``."""
        with self._lock:
            if self._failures < self.threshold:
                return "closed"
            return "half_open" if self._clock() >= self._open_until else "open"

    def wait_time(self) -> float:
        """Seconds to wait before writing; 0 means go (and, half-open, you are the probe)."""
        with self._lock:
            if self._failures < self.threshold:
                return 0.0
            left = self._open_until - self._clock()
            if left > 0:
                return left
            if self._probing:
                # Another thread is probing: check back shortly.
                return min(self.open_for, 0.1)
            self._probing = True
            return 0.0

    def record_success(self) -> None:
        """A write succeeded: close."""
        with self._lock:
            self._failures = 0
            self._probing = False

    def record_failure(self) -> None:
        """A write failed transiently: count it, and open (again) at the threshold."""
        with self._lock:
            self._failures += 1
            self._probing = False
            if self._failures >= self.threshold:
                self._open_until = self._clock() + self.open_for
