"""Waiting in tests: poll a condition until a deadline instead of sleeping a guess.

A ``time.sleep(0.5)`` before an assertion is both slow (it always waits the full guess)
and flaky (on a loaded machine the guess is too short). Polling the condition returns as
soon as it holds and fails with a clear message when it never does::

    from taskguard.testing import wait_until

    wait_until(lambda: breaker.local_state == "open", timeout=5)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_until"]

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str | Callable[[], str] | None = None,
) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    The predicate is called at once, then every ``interval`` seconds, and one last time
    at the deadline, so a condition that holds in time is never reported as missed.

    Args:
        predicate: What to wait for; it must not block for long.
        timeout: Seconds to wait before giving up.
        interval: Seconds between two calls.
        message: Says what was awaited, in the error; a callable is called only on
            failure (to report the state at that moment).

    Returns:
        The predicate's first truthy value.

    Raises:
        TimeoutError: The predicate was still falsy after ``timeout`` seconds.
        ValueError: ``timeout`` is negative or ``interval`` is not positive.

    Example:
        >>> from taskguard.testing import wait_until
        >>> calls = []
        >>> wait_until(lambda: calls.append(1) or len(calls) >= 3, interval=0.001)
        True
        >>> wait_until(lambda: False, timeout=0.01, message="never")
        Traceback (most recent call last):
        ...
        TimeoutError: not reached within 0.01 s: never
    """
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0, got {timeout!r}")
    if interval <= 0:
        raise ValueError(f"interval must be > 0, got {interval!r}")
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(interval, left))
    what = message() if callable(message) else message
    raise TimeoutError(f"not reached within {timeout:g} s" + (f": {what}" if what else ""))
