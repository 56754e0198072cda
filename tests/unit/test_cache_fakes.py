"""An in-memory Store (a fake of our own protocol) for the cache's unit tests, and its tests.

Integration tests use the real SQL store; here the store only has to keep the protocol:
versioned upserts, tombstones, one transaction per write, and failing on demand.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import pytest

from taskguard.errors import StoreError
from taskguard.sinks.base import Loaded, Record, Store


class MemoryStore:
    """A dict keyed by (namespace, key); ``fail`` makes every call raise StoreError."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Loaded] = {}
        self.writes: list[list[Record]] = []
        self.loads = 0
        self.fail = False
        self._lock = threading.Lock()

    def _check(self) -> None:
        if self.fail:
            raise StoreError("store down (test)", transient=True)

    def write(self, namespace: str, records: Sequence[Record]) -> None:
        self._check()
        assert len({r.key for r in records}) == len(records), "one record per key"
        with self._lock:
            self.writes.append(list(records))
            for r in records:
                old = self.rows.get((namespace, r.key))
                if old is None or old.version < r.version:
                    self.rows[namespace, r.key] = Loaded(r.value, r.version, r.deleted)

    def load(self, namespace: str, key: str) -> Loaded | None:
        self._check()
        self.loads += 1
        return self.rows.get((namespace, key))

    def load_many(self, namespace: str, keys: Sequence[str]) -> Mapping[str, Loaded]:
        self._check()
        self.loads += 1
        return {k: self.rows[namespace, k] for k in keys if (namespace, k) in self.rows}

    def close(self) -> None:
        pass


def test_memory_store_keeps_the_protocol() -> None:
    store = MemoryStore()
    assert isinstance(store, Store)
    store.write("ns", [Record("a", 1, version=5)])
    store.write("ns", [Record("a", 0, version=4)])  # older: skipped
    assert store.load("ns", "a") == Loaded(1, 5)
    store.write("ns", [Record("a", None, version=6, deleted=True)])
    assert store.load("ns", "a") == Loaded(None, 6, True)
    store.fail = True
    with pytest.raises(StoreError):
        store.load("ns", "a")
