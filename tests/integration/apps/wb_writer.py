"""A write-behind writer process for the no-loss tests.

Usage::

    python -m tests.integration.apps.wb_writer REDIS_URL PREFIX NAMESPACE STORE_URL \\
        WRITER_ID KEYS WRITES SEED

Writes ``WRITES`` values over keys ``k0 .. k{KEYS-1}`` through a write-behind cache, in
``set_many`` chunks: first every key once (so no key can be missing by chance), then keys
drawn at random (seeded, so writers overlap on the same keys). Each value names its writer
and its sequence number. Prints ``done <writes>`` when finished.
"""

from __future__ import annotations

import random
import sys

import taskguard
from taskguard.sinks.sql import SQLStore

CHUNK = 200


def main(argv: list[str]) -> None:
    redis_url, prefix, namespace, store_url = argv[:4]
    writer, keys, writes, seed = (int(x) for x in argv[4:8])
    store = SQLStore(store_url, create=False)
    cache = taskguard.connect(redis_url, prefix=prefix).cache(
        namespace, strategy="write-behind", ttl=3600, store=store
    )
    rng = random.Random(seed)
    order = [f"k{i}" for i in range(keys)]
    rng.shuffle(order)
    order += [f"k{rng.randrange(keys)}" for _ in range(max(0, writes - keys))]
    written = 0
    for start in range(0, len(order), CHUNK):
        chunk: dict[str, object] = {}
        for n, key in enumerate(order[start : start + CHUNK], start=start):
            if key in chunk:  # one chunk's set_many holds one value per key
                cache.set_many(chunk)
                written += len(chunk)
                chunk = {}
            chunk[key] = {"w": writer, "n": n}
        cache.set_many(chunk)
        written += len(chunk)
    print(f"done {written}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
