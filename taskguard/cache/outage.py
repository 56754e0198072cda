"""Cache outage warnings, rate-limited: at most one line every few seconds per process.

While Redis is down every cache call falls back (to the store, the loader or a direct
write) and has something to say about it. One line per call would bury the log during an
outage; one line every :data:`EVERY` seconds, with the count of the lines left out, keeps
the outage visible, like the guards' outage log (``guards/admission.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["EVERY", "THROTTLE", "Throttle", "warn"]

logger = logging.getLogger("taskguard.cache")

#: Seconds between two outage warnings of one process.
EVERY = 5.0


class Throttle:
    """Lets one event through every ``every`` seconds and counts the others.

    Args:
        every: Seconds between two events let through.
        clock: Monotonic seconds (injectable for tests).
    """

    def __init__(self, every: float = EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self._last = -float("inf")
        self._held = 0
        self._lock = threading.Lock()

    def admit(self) -> int | None:
        """None if this event is held back; otherwise how many were held back since the
        last one let through."""
        with self._lock:
            now = self.clock()
            if now - self._last < self.every:
                self._held += 1
                return None
            self._last = now
            held, self._held = self._held, 0
            return held


#: The process's throttle of cache outage warnings.
THROTTLE = Throttle()


def warn(message: str, *args: object) -> None:
    """Log a cache outage warning (``message % args``) unless one went out less than
    :data:`EVERY` seconds ago."""
    held = THROTTLE.admit()
    if held is None:
        return
    if held:
        logger.warning(message + " (and %d more like it)", *args, held)
    else:
        logger.warning(message, *args)
