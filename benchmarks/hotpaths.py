"""Where a hot path's time goes: taskguard's Python per call, and its server side.

Not part of the suite's goals: a profiling aid for docs/performance.md ("Hot paths").
For each of a GCRA decision, a lock pair, a semaphore pair and an exact-mode breaker call:

* the Python per call with the Redis client stubbed out (it answers as Redis would), so
  only taskguard's own code runs: a lower bound, everything hot in the CPU caches;
* on a throwaway Redis, per call: every command the server ran (``INFO commandstats``:
  the ``EVALSHA`` and the commands its script ran inside it) with its server time;
* for each op shape with a lean script of its own (``wire.script_for``), the server time
  of the general script against the lean one, in alternating rounds.

Run it with ``PYTHONPATH`` pointing at the checkout to measure, e.g. before and after a
change (the numbers move with the load of the machine, so compare runs made side by side)::

    PYTHONPATH=. .venv/bin/python -m benchmarks.hotpaths
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

import taskguard
from taskguard.backend.lua import Script, load_script
from taskguard.backend.ops import RateOp
from taskguard.backend.wire import encode, script_for
from taskguard.testing import RedisServer

Call = Callable[[], object]
CALLS = 20_000


class _Stub:
    """Stands in for the redis-py client: answers each EVALSHA from a fixed list."""

    def __init__(self, replies: list[Any]) -> None:
        self.replies = replies
        self.sent = 0

    def evalsha(self, *args: Any) -> Any:
        reply = self.replies[self.sent % len(self.replies)]
        self.sent += 1
        return reply


def _paths(client: taskguard.Client) -> dict[str, Call]:
    limiter = client.rate_limiter("b", "1000000/s", burst=1_000_000)
    lock = client.lock("bench-lock", ttl=30, renew=False)
    semaphore = client.semaphore("bench-sem", limit=10, ttl=60, renew=False)
    breaker = client.circuit_breaker("bench-breaker", open_for=30)

    def lock_pair() -> None:
        lease = lock.try_acquire().lease
        assert lease is not None
        lease.release()

    def semaphore_pair() -> None:
        lease = semaphore.try_acquire().lease
        assert lease is not None
        lease.release()

    return {
        "GCRA decision": limiter.try_acquire,
        "lock pair": lock_pair,
        "semaphore pair": semaphore_pair,
        "breaker call (exact)": lambda: breaker.call(lambda: None),
    }


#: What Redis answers each path's EVALSHAs with (allowed, and released / no transition).
REPLIES = {
    "GCRA decision": [[1, 0, 0, 0, 999_999, 0]],
    "lock pair": [[1, 0, 0, 0, 1], [1]],
    "semaphore pair": [[1, 0, 0, 0, 0], [1]],
    "breaker call (exact)": [[1, 0, 0, 0, 0], [0]],
}


def _us_per_call(call: Call, seconds: float = 1.0) -> float:
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(200):
            call()
        calls += 200
    return (time.perf_counter() - started) / calls * 1e6


def python_us() -> dict[str, float]:
    """Microseconds of taskguard's Python per call, client stubbed (best of 3 seconds)."""
    found = {}
    for name, replies in REPLIES.items():
        stub = _Stub(replies)
        client = taskguard.connect("redis://127.0.0.1:1/0", prefix="stub", client=stub)
        call = _paths(client)[name]
        found[name] = min(_us_per_call(call) for _ in range(3))
    return found


def server_side(url: str) -> dict[str, dict[str, tuple[float, float]]]:
    """Per path: command -> (calls per call, server µs per call), from commandstats."""
    admin = redis.Redis.from_url(url)
    found = {}
    for name, call in _paths(taskguard.connect(url, prefix="hot")).items():
        for _ in range(500):  # script loads, first keys
            call()
        admin.config_resetstat()
        for _ in range(CALLS):
            call()
        stats = admin.info("commandstats")
        found[name] = {
            command.removeprefix("cmdstat_"): (row["calls"] / CALLS, row["usec"] / CALLS)
            for command, row in stats.items()
            if row["calls"] >= CALLS // 2
        }
    return found


def _evalsha_us(admin: redis.Redis, script: Script, keys: list[str], args: list[Any]) -> float:
    script(admin, keys, args)  # loads it
    admin.config_resetstat()
    for _ in range(CALLS // 4):
        script(admin, keys, args)
    row = admin.info("commandstats")["cmdstat_evalsha"]
    return float(row["usec"]) / row["calls"]


def lean_scripts(url: str, rounds: int = 5) -> dict[str, dict[str, list[float]]]:
    """Server µs per call of each lean script and of the general script it stands in for,
    on the same op and state, in ``rounds`` alternating rounds."""
    admin = redis.Redis.from_url(url)
    op = RateOp(key="lean:{lean}:rl:b", interval=1.0, burst=1_000_000)
    keys, args = encode([op], release=False)
    scripts = {
        "admit.lua": load_script("admit", ["ops", "gcra"]),
        "admit_rl.lua": script_for("admit", [op]),
    }
    found: dict[str, list[float]] = {name: [] for name in scripts}
    for _ in range(rounds):
        for name, script in scripts.items():
            found[name].append(_evalsha_us(admin, script, keys, [0, *args]))
    return {"GCRA decision": found}


def main() -> None:
    print(f"taskguard from {taskguard.__file__}")
    for name, us in python_us().items():
        print(f"{name:22s} Python {us:6.2f} µs/call (client stubbed)")
    with RedisServer() as server:
        for name, commands in server_side(server.url).items():
            total = sum(calls for calls, _ in commands.values())
            evalsha_us = commands.get("evalsha", (0.0, 0.0))[1]
            inside = ", ".join(
                f"{calls:g} {command.upper()}"
                for command, (calls, _) in sorted(commands.items())
                if command != "evalsha"
            )
            print(
                f"{name:22s} {total:g} commands/call (inside the scripts: {inside}); "
                f"EVALSHA {evalsha_us:.1f} µs/call in Redis, its commands included"
            )
        for name, scripts in lean_scripts(server.url).items():
            for script, rounds in scripts.items():
                listed = " ".join(f"{us:.1f}" for us in rounds)
                median = sorted(rounds)[len(rounds) // 2]
                print(f"{name:22s} {script:13s} {median:5.1f} µs/call in Redis (rounds {listed})")


if __name__ == "__main__":
    main()
