"""Stampede protection for cache-aside loads: single flight and early refresh.

On a miss, one caller takes the key's flight lock (``SET NX PX``), calls the loader and
caches the result; the others poll the cached copy with a short backoff (no wake-up list:
the poll reads the copy and tries the lock in one script call) until it appears. A waiter
that has waited ``flight_wait`` seconds loads the value itself, so a hung loader delays
readers but never blocks them. The flight lock expires after ``flight_ttl``, so a caller
that died while loading frees the key.
"""

from __future__ import annotations

import logging
import random
import time as _time
import uuid
from collections.abc import Callable
from typing import Any

from taskguard.errors import BackendUnavailable

from . import outage
from .ops import CacheOps, Lookup
from .xfetch import should_refresh_early

__all__ = ["SingleFlight"]

logger = logging.getLogger("taskguard.cache")

#: Encodes a loaded value and its load time into (cached copy, ttl_ms).
CopyMaker = Callable[[Any, float], tuple[bytes, int]]

_FIRST_POLL = 0.002
_MAX_POLL = 0.05


class SingleFlight:
    """Loads a missing key once across the fleet, and refreshes hot keys early.

    Args:
        ops: The namespace's Redis calls.
        make_copy: Encodes a loaded value into its cached copy and TTL.
        flight_ttl: Seconds a flight lock lives (bounds a dead loader's hold).
        flight_wait: Seconds a waiter polls before loading on its own.
        early_refresh: XFetch's beta (0 disables early refresh).
        rng: The randomness of early refresh.
        sleep: Sleeps between polls (injectable for tests).
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        ops: CacheOps,
        make_copy: CopyMaker,
        *,
        flight_ttl: float,
        flight_wait: float,
        early_refresh: float,
        rng: random.Random,
        sleep: Callable[[float], None] = _time.sleep,
        clock: Callable[[], float] = _time.monotonic,
    ) -> None:
        self.ops = ops
        self.make_copy = make_copy
        self.flight_ttl_ms = max(int(flight_ttl * 1000), 1)
        self.flight_wait = flight_wait
        self.early_refresh = early_refresh
        self.rng = rng
        self.sleep = sleep
        self.clock = clock

    def load(self, key: str, loader: Callable[[], Any]) -> Any:
        """The value of missing ``key``: loaded by one caller, waited for by the others."""
        token = uuid.uuid4().hex
        deadline = self.clock() + self.flight_wait
        delay = _FIRST_POLL
        while True:
            mine, lookup = self.ops.try_flight(key, token, self.flight_ttl_ms)
            if mine:
                return self._load_and_cache(key, loader, token, only_if_absent=True)
            if lookup.kind == "cached":
                return lookup.value
            if self.clock() >= deadline:
                break
            self.sleep(min(delay, max(deadline - self.clock(), 0.0)))
            delay = min(delay * 2, _MAX_POLL)
        logger.warning(
            "cache %s: waited %.2fs for another caller to load %r; loading it here",
            self.ops.namespace,
            self.flight_wait,
            key,
        )
        return self._load_and_cache(key, loader, "", only_if_absent=True)

    def maybe_refresh(self, key: str, lookup: Lookup, loader: Callable[[], Any]) -> Any:
        """``lookup``'s value, or a fresh one when XFetch says this reader refreshes early.

        Only the caller that wins the flight lock reloads; the others keep the cached value.
        """
        if not should_refresh_early(
            lookup.delta, lookup.remaining, self.early_refresh, self.rng.random
        ):
            return lookup.value
        token = uuid.uuid4().hex
        mine, _ = self.ops.try_flight(key, token, self.flight_ttl_ms, force=True)
        if not mine:
            return lookup.value
        return self._load_and_cache(key, loader, token, only_if_absent=False)

    def _load_and_cache(
        self, key: str, loader: Callable[[], Any], token: str, *, only_if_absent: bool
    ) -> Any:
        started = self.clock()
        try:
            value = loader()
        except BaseException:
            if token:
                self._fill(key, b"", 1, only_if_absent=True, token=token)
            raise
        cached, ttl_ms = self.make_copy(value, self.clock() - started)
        self._fill(key, cached, ttl_ms, only_if_absent=only_if_absent, token=token)
        return value

    def _fill(
        self, key: str, cached: bytes, ttl_ms: int, *, only_if_absent: bool, token: str
    ) -> None:
        # The value is loaded: a Redis failure now only costs the cached copy (the flight
        # lock expires on its own), never the caller's value or its loader's exception.
        try:
            self.ops.fill(key, cached, ttl_ms, only_if_absent=only_if_absent, token=token)
        except BackendUnavailable as exc:
            outage.warn("cache %s: could not cache %r: %s", self.ops.namespace, key, exc)
