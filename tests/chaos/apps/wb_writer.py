"""A write-behind writer for the chaos tests: it logs every write ``set()`` acknowledged.

Usage::

    python -m tests.chaos.apps.wb_writer REDIS_URL PREFIX NAMESPACE STORE_URL TABLE \\
        WRITER KEYS WRITES RATE ACK_LOG

Writes ``WRITES`` values, about ``RATE`` a second, through a write-behind cache. Write
``n`` sets key ``w<WRITER>-k<i>`` to ``{"w": WRITER, "n": n}``: the first half of the
writes go round the keys ``0 .. KEYS-1``, the second half round the upper half only, so the
lower half is last written in the first half of the run. Each key has this one writer, so
``n`` orders its writes.

After each ``set()`` that returns, one line goes to ``ACK_LOG`` (line-buffered, so the
test can follow the progress): ``<key> <n> <called at> <returned at>`` (epoch seconds). A
``set()`` that raises is logged as ``ERR <key> <n> <error>`` and not acknowledged. Prints
``done <acknowledged>`` at the end.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import time

import taskguard
from taskguard.sinks.sql import SQLStore


def key_of(writer: int, n: int, keys: int, writes: int) -> str:
    if n < writes // 2:
        return f"w{writer}-k{n % keys}"
    upper = keys - keys // 2
    return f"w{writer}-k{keys // 2 + n % upper}"


def main(argv: list[str]) -> None:
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1` prints the stacks of a stuck writer
    redis_url, prefix, namespace, store_url, table = argv[:5]
    writer, keys, writes = (int(x) for x in argv[5:8])
    rate, ack_log = float(argv[8]), argv[9]
    store = SQLStore(store_url, table=table, create=False)
    cache = taskguard.connect(redis_url, prefix=prefix).cache(
        namespace, strategy="write-behind", ttl=3600, store=store
    )
    acknowledged = 0
    began = time.monotonic()
    with open(ack_log, "a", buffering=1) as log:
        for n in range(writes):
            key = key_of(writer, n, keys, writes)
            called = time.time()
            try:
                cache.set(key, {"w": writer, "n": n})
            except Exception as exc:  # not acknowledged: the auditor expects nothing of it
                error = f"{type(exc).__name__}: {exc}".replace("\n", " ")
                log.write(f"ERR {key} {n} {error}\n")
                continue
            log.write(f"{key} {n} {called:.6f} {time.time():.6f}\n")
            acknowledged += 1
            ahead = began + (n + 1) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)  # the writer's pace
    print(f"done {acknowledged}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
