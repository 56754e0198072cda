"""What a guarded no-op's one round trip costs its process, with Sentry off and on.

Not part of the suite (no goal): a profile behind the (b) and (b2) write-ups in
docs/performance.md. In one process, through Celery's own tracer (as
:mod:`benchmarks.observed_profile`), it prints the CPU time per task (``time.process_time``,
the least of ``--repeat`` alternating batches of ``--tasks``) of:

1. **stub**: the plain and the guarded no-op, Sentry off, with the admission's round trip
   real and then stubbed out (the lane hands back the reply it last read, sending
   nothing): taskguard's own Python per run, apart from the round trip's system calls;
2. **blocking**: the plain no-op alone, and with one bare ``PING`` to Redis, its reply
   read by a blocking ``recv`` or by spinning on a non-blocking socket, first with Sentry
   off, then on (every transaction, as :mod:`benchmarks.observing`): what sleeping on a
   socket costs the work that follows it::

    python -m benchmarks.blocking_profile --tasks 1500 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import socket
import uuid
from collections.abc import Callable
from typing import Any

from .observed_profile import URL, _per_task, _tracer


def _least(calls: dict[str, Callable[[], None]], tasks: int, repeat: int) -> dict[str, float]:
    for call in calls.values():  # warm: connections, script load
        _per_task(call, 200)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, call in calls.items():
            times[name].append(_per_task(call, tasks))
    return {name: min(found) for name, found in times.items()}


def stub(app: Any, tasks: int, repeat: int) -> None:
    """Plain and guarded, the round trip real and then stubbed out (Sentry off)."""
    from taskguard.backend import lane

    plain, guarded = _tracer(app, "bench.noop"), _tracer(app, "bench.guarded_noop")
    real = _least({"plain": plain, "guarded": guarded}, tasks, repeat)
    original = lane.Lane._send
    replies: list[Any] = []

    def recording(self: Any, packed: list[bytes]) -> Any:
        replies.append(original(self, packed))
        return replies[-1]

    lane.Lane._send = recording  # type: ignore[method-assign]
    guarded()
    canned = replies[-1]
    lane.Lane._send = lambda self, packed: canned  # type: ignore[method-assign]
    try:
        stubbed = _least({"guarded": guarded}, tasks, repeat)["guarded"]
    finally:
        lane.Lane._send = original  # type: ignore[method-assign]
    print(f"CPU µs per task, least of {repeat} x {tasks}, Sentry off")
    print(f"  plain no-op                          {real['plain']:8.1f}")
    print(f"  guarded no-op                        {real['guarded']:8.1f}")
    print(f"  guarded, round trip stubbed out      {stubbed:8.1f}")
    print(f"  taskguard's Python per run           {stubbed - real['plain']:8.1f}")
    print(f"  the round trip                       {real['guarded'] - stubbed:8.1f}")


def _ping(sock: socket.socket, spin: bool) -> None:
    sock.sendall(b"*1\r\n$4\r\nPING\r\n")
    if not spin:
        sock.recv(64)
        return
    sock.setblocking(False)
    try:
        while True:
            try:
                sock.recv(64)
                return
            except BlockingIOError:
                continue
    finally:
        sock.setblocking(True)


def blocking(app: Any, tasks: int, repeat: int, redis_url: str) -> None:
    """The plain no-op alone, then with a PING read blocking or spinning; Sentry off, on."""
    from benchmarks.observing import observe

    host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    task = app.tasks["bench.noop"]
    body = task.run
    mode = {"ping": False, "spin": False}

    def run(*args: Any, **kwargs: Any) -> Any:
        if mode["ping"]:
            _ping(sock, mode["spin"])
        return body(*args, **kwargs)

    task.run = run
    try:
        for label in ("Sentry off", "Sentry on"):
            if label == "Sentry on":
                observe(app, prefix=os.environ["TG_BENCH_PREFIX"], counter_url=redis_url)
            call = _tracer(app, "bench.noop")  # built after init: Sentry wraps the tracer

            def variant(ping: bool, spin: bool, call: Callable[[], None] = call) -> Any:
                def timed() -> None:
                    mode["ping"], mode["spin"] = ping, spin
                    call()

                return timed

            found = _least(
                {
                    "alone": variant(False, False),
                    "blocking": variant(True, False),
                    "spinning": variant(True, True),
                },
                tasks,
                repeat,
            )
            base = found["alone"]
            print(
                f"{label}: plain no-op {base:.1f} µs; + a PING read blocking "
                f"{found['blocking'] - base:+.1f}, spinning {found['spinning'] - base:+.1f}"
            )
    finally:
        task.run = body
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--redis-url", default=URL)
    options = parser.parse_args()
    os.environ["TG_BENCH_BROKER_URL"] = options.redis_url
    os.environ["TG_BENCH_PREFIX"] = f"tgprof{uuid.uuid4().hex[:6]}"

    from benchmarks import celeryapp  # here: it reads the environment above

    stub(celeryapp.app, options.tasks, options.repeat)
    blocking(celeryapp.app, options.tasks, options.repeat, options.redis_url)


if __name__ == "__main__":
    main()
