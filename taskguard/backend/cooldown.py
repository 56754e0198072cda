"""A process-local breaker: after failures, wait out a cooldown, then let one probe through.

Used around Redis (:class:`~taskguard.backend.outage.OutageBreaker`: fail fast while it is
down) and around each store of a drain pool (:class:`~taskguard.drain.backoff.SinkBreaker`:
wait instead of hammering a failing database). Unlike the fleet-wide
:class:`~taskguard.guards.CircuitBreaker`, its state lives in this process only.

States: closed (fewer than ``threshold`` consecutive failures) -> open for a cooldown ->
half-open: the next caller is the probe, and its recorded outcome closes the breaker or
opens it again. The cooldown doubles with each failure past the threshold, up to
``max_cooldown``.
"""

from __future__ import annotations

import math
import threading
import time as _time
from collections.abc import Callable

__all__ = ["CooldownBreaker"]


class CooldownBreaker:
    """Open after ``threshold`` consecutive failures; probe once the cooldown has passed.

    Args:
        threshold: Consecutive failures that open it.
        cooldown: Seconds it stays open after opening.
        max_cooldown: Longest cooldown: each failure past the threshold doubles it up to
            this. None: it never grows.
        probe_poll: What the other callers are told while the probe is out. None: wait
            until one cooldown after the probe went out; then the next caller probes again
            (the probe may have hung). A number: check back after that many seconds, as
            long as the probe's outcome is not recorded.
        clock: Monotonic seconds (injectable for tests).

    Attributes:
        failures: Consecutive failures so far; 0 while all is well (a hot path may read
            it to skip the breaker's calls then).
    """

    def __init__(
        self,
        *,
        threshold: int = 1,
        cooldown: float,
        max_cooldown: float | None = None,
        probe_poll: float | None = None,
        clock: Callable[[], float] = _time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.max_cooldown = cooldown if max_cooldown is None else max_cooldown
        self.probe_poll = probe_poll
        self._clock = clock
        self._lock = threading.Lock()
        self.failures = 0
        self._open_until = 0.0
        self._probe_until = 0.0  # a probe is out until then (inf: until its outcome)

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open``."""
        with self._lock:
            if self.failures < self.threshold:
                return "closed"
            return "half_open" if self._clock() >= self._open_until else "open"

    @property
    def is_open(self) -> bool:
        """True while callers are turned away (open, or half-open with a probe out)."""
        if self.failures < self.threshold:
            return False
        now = self._clock()
        return now < self._open_until or now < self._probe_until

    def wait_time(self) -> float:
        """Seconds to wait before calling; 0 means go (half-open: you are the probe)."""
        if self.failures < self.threshold:  # the common case: one attribute read, no lock
            return 0.0
        with self._lock:
            now = self._clock()
            if now < self._open_until:
                return self._open_until - now
            if now < self._probe_until:
                left = self._probe_until - now
                return left if self.probe_poll is None else min(left, self.probe_poll)
            self._probe_until = now + (
                self.current_cooldown() if self.probe_poll is None else math.inf
            )
            return 0.0

    def record_success(self) -> None:
        """A call succeeded: close."""
        if self.failures:  # the common case costs one attribute read
            with self._lock:
                self.failures = 0
                self._open_until = self._probe_until = 0.0

    def record_failure(self) -> float:
        """A call failed: count it, and open (again) at the threshold.

        Returns:
            The cooldown now in force, in seconds (0 while still closed).
        """
        with self._lock:
            self.failures += 1
            self._probe_until = 0.0
            if self.failures < self.threshold:
                return 0.0
            cooldown = self.current_cooldown()
            self._open_until = self._clock() + cooldown
            return cooldown

    def reset(self) -> None:
        """Forget every failure (used after fork)."""
        with self._lock:
            self.failures = 0
            self._open_until = self._probe_until = 0.0

    def current_cooldown(self) -> float:
        """The cooldown for the failures counted so far."""
        doublings = min(max(self.failures - self.threshold, 0), 62)
        return float(min(self.max_cooldown, self.cooldown * 2**doublings))
