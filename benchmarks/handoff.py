"""Wake latency: from a holder's release to a blocked waiter's acquire returning.

Two processes: this one holds, a spawned child waits. For each handoff:

1. the holder acquires (uncontended) and tells the waiter to go;
2. the waiter answers "ready" and calls its blocking acquire, which finds the lock (or
   the last free slot) taken and blocks, each library in its own way: a BLPOP on a
   wake-up list, or sleeping between polls;
3. the holder sleeps a random hold time, uniform in [5, 105] ms, so that the waiter is
   surely blocked and a polling waiter is caught at a random phase of its poll interval;
   then it reads :func:`time.perf_counter` and calls release;
4. the waiter reads :func:`time.perf_counter` as soon as its acquire returns, releases
   and sends its reading back.

The latency is the waiter's reading minus the holder's. ``perf_counter`` is
``CLOCK_MONOTONIC`` on Linux, one clock for every process on the machine. It counts from
the *start* of the holder's release call, so it includes the release's own round trip: it
is what a waiting caller sees. Variants take turns handoff by handoff, so they share the
same background on this noisy machine.
"""

from __future__ import annotations

import math
import multiprocessing
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Protocol

from .harness import Context, median

__all__ = ["Handoff", "Latencies", "Side", "measure"]

HOLD_MIN = 0.005
HOLD_SPAN = 0.100
#: How long a waiter may wait before the handoff counts as failed.
WAIT_TIMEOUT = 10.0


class Side(Protocol):
    """One process's view of a lock or semaphore."""

    def take(self) -> object:
        """Acquire now (the holder's side: it is free)."""

    def wait(self) -> object:
        """Acquire, blocking until the holder releases (the waiter's side)."""

    def give(self, held: object) -> None:
        """Release what :meth:`take` or :meth:`wait` returned."""

    def close(self) -> None:
        """Release anything else this side still holds."""


@dataclass(frozen=True)
class Handoff:
    """A library under test.

    Attributes:
        label: Shown in the table.
        make: A module-level function (the waiter process imports it by name), building
            one process's :class:`Side` from the server URL, a key namespace shared by
            both processes, and the role, ``"holder"`` or ``"waiter"``.
    """

    label: str
    make: Callable[[str, str, str], Side]


@dataclass(frozen=True)
class Latencies:
    """One variant's handoff latencies, in milliseconds."""

    label: str
    ms: list[float]

    def percentile(self, p: float) -> float:
        """Nearest rank: the smallest latency that ``p`` percent of handoffs do not exceed."""
        ordered = sorted(self.ms)
        return ordered[min(len(ordered), max(1, math.ceil(p / 100 * len(ordered)))) - 1]

    @property
    def p50(self) -> float:
        return median(self.ms)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    def summary(self) -> dict[str, Any]:
        return {
            "handoffs": len(self.ms),
            "p50_ms": self.p50,
            "p90_ms": self.percentile(90),
            "p99_ms": self.p99,
            "max_ms": max(self.ms),
            "min_ms": min(self.ms),
            "mean_ms": statistics.fmean(self.ms),
            "latencies_ms": [round(ms, 4) for ms in self.ms],
        }


def _waiter(conn: Connection, url: str, namespace: str, variants: Sequence[Handoff]) -> None:
    sides = [v.make(url, f"{namespace}-{i}", "waiter") for i, v in enumerate(variants)]
    conn.send("up")
    clock = time.perf_counter
    while (index := conn.recv()) is not None:
        side = sides[index]
        conn.send("ready")
        held = side.wait()
        acquired = clock()
        side.give(held)
        conn.send(acquired)


def measure(context: Context, name: str, variants: Sequence[Handoff]) -> list[Latencies]:
    """``handoffs`` handoffs per variant, interleaved; the latencies of each."""
    handoffs = 20 if context.quick else 200
    url, namespace = context.server.url, context.unique(name)
    sides = [v.make(url, f"{namespace}-{i}", "holder") for i, v in enumerate(variants)]
    spawn = multiprocessing.get_context("spawn")
    conn, child_conn = spawn.Pipe()
    child = spawn.Process(
        target=_waiter,
        args=(child_conn, url, namespace, list(variants)),
        name=f"tgbench-{name}-waiter",
        daemon=True,
    )
    child.start()
    holds = random.Random(0)  # the same hold times on every run
    latencies: list[list[float]] = [[] for _ in variants]
    clock = time.perf_counter
    try:
        _expect(conn, child, "up", 60.0)
        for _ in range(handoffs):
            for index, side in enumerate(sides):
                held = side.take()
                conn.send(index)
                _expect(conn, child, "ready", WAIT_TIMEOUT)
                time.sleep(HOLD_MIN + holds.random() * HOLD_SPAN)
                released = clock()
                side.give(held)
                acquired = _expect(conn, child, None, WAIT_TIMEOUT)
                if acquired < released:
                    raise RuntimeError(
                        f"{variants[index].label}: the waiter acquired before the release"
                    )
                latencies[index].append((acquired - released) * 1000)
        conn.send(None)
        child.join(10)
    finally:
        for side in sides:
            side.close()
        if child.is_alive():
            child.kill()
            child.join(5)
    return [Latencies(v.label, ms) for v, ms in zip(variants, latencies, strict=True)]


def _expect(conn: Connection, child: Any, what: object, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise TimeoutError(f"the waiter process sent nothing for {timeout:g} s")
    message = conn.recv()
    if what is not None and message != what:
        raise RuntimeError(f"the waiter process sent {message!r}, expected {what!r}")
    return message
