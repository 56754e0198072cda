"""A log line that repeats at most once per interval, counting the ones it skipped."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

__all__ = ["Throttled"]

logger = logging.getLogger("taskguard.events")


class Throttled:
    """Logs the first warning, then at most one line per ``every`` seconds with a count
    of those skipped in between (a Redis outage must not flood the worker's log)."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._lock = threading.Lock()
        self._last = -float("inf")
        self._skipped = 0

    def log(self, message: str, *args: Any, exc_info: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.every:
                self._skipped += 1
                return
            self._last, skipped, self._skipped = now, self._skipped, 0
        if skipped:
            message += " (and %d more since the last such line)"
            args = (*args, skipped)
        logger.warning(message, *args, exc_info=exc_info)
