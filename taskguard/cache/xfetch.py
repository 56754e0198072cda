"""Probabilistic early refresh ("XFetch", Vattani, Chierichetti and Lowenstein, VLDB 2015).

A reader refreshes a cached value before it expires with a probability that grows as the
expiry nears and with how long the value takes to load, so a hot key is reloaded by one
reader a little early instead of by a stampede just after it expires. The rule: refresh
when ``-delta * beta * log(rand()) >= remaining``, with ``delta`` the last load's duration,
``beta`` the eagerness (1.0 is the paper's optimum; 0 disables), ``remaining`` the time to
live left and ``rand()`` uniform in (0, 1].
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

__all__ = ["should_refresh_early"]


def should_refresh_early(
    delta: float,
    remaining: float,
    beta: float,
    rand: Callable[[], float] = random.random,
) -> bool:
    """Whether this reader should reload a value that is still cached.

    Args:
        delta: Seconds the value took to load.
        remaining: Seconds the cached copy has left to live.
        beta: Eagerness; 0 never refreshes early, larger values refresh earlier.
        rand: A uniform random number in [0, 1) (injectable for tests).

    Returns:
        True when the reader should reload now.

    Example:
        >>> should_refresh_early(delta=0.5, remaining=0.1, beta=1.0, rand=lambda: 0.5)
        True
        >>> should_refresh_early(delta=0.5, remaining=60.0, beta=1.0, rand=lambda: 0.5)
        False
    """
    if beta <= 0 or delta <= 0:
        return False
    # 1 - rand() is in (0, 1]: log() never sees 0.
    return -delta * beta * math.log(1.0 - rand()) >= remaining
