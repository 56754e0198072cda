"""taskguard.aio's cache-aside cache on a real Redis: it reads and writes the copies of
the sync CacheService of the same namespace, and one single-flight lock covers loads
from both APIs."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import taskguard
import taskguard.aio
from taskguard import BackendUnavailable, ConfigurationError
from taskguard.aio import AsyncClient

from .aio_support import Pair, eventually


def test_copies_are_shared_with_the_sync_cache(pair: Pair) -> None:
    sync = pair.sync.cache("users", ttl=60)

    async def test(client: AsyncClient) -> None:
        users = client.cache("users", ttl=60)
        sync.set("1", {"name": "Ada"})
        assert await users.get("1") == {"name": "Ada"}
        await users.set_many({"2": {"name": "Grace"}, "3": [1, 2]})
        assert sync.get("2") == {"name": "Grace"}
        assert await users.get_many(["1", "2", "3", "4"]) == {
            "1": {"name": "Ada"},
            "2": {"name": "Grace"},
            "3": [1, 2],
        }
        await users.delete("1")
        assert sync.get("1") is None
        assert await users.get("1", "gone") == "gone"
        with pytest.raises(ValueError, match="use delete"):
            await users.set("x", None)

    pair.run(test)


def test_get_or_load_loads_once_for_concurrent_callers(pair: Pair) -> None:
    async def test(client: AsyncClient) -> None:
        cache = client.cache("reports", ttl=60)
        calls: list[str] = []
        release = asyncio.Event()

        async def load() -> dict[str, int]:
            calls.append("load")
            await release.wait()
            return {"total": 42}

        readers = [asyncio.ensure_future(cache.get_or_load("r1", load)) for _ in range(5)]
        await eventually(lambda: len(calls) == 1)
        release.set()
        assert await asyncio.gather(*readers) == [{"total": 42}] * 5
        assert calls == ["load"]
        assert await cache.get("r1") == {"total": 42}

        async def nothing() -> None:
            return None

        assert await cache.get_or_load("none", nothing) is None  # cached as "no value"
        assert await cache.get_or_load("none", load) is None
        assert calls == ["load"]

    pair.run(test)


def test_a_sync_reader_waits_for_an_asyncio_load(pair: Pair) -> None:
    sync = pair.sync.cache("shared", ttl=60)
    sync_loads: list[str] = []

    def sync_load() -> str:
        sync_loads.append("sync")
        return "from sync"

    async def test(client: AsyncClient) -> Any:
        cache = client.cache("shared", ttl=60)
        started, release = asyncio.Event(), threading.Event()

        async def load() -> str:
            started.set()
            await asyncio.to_thread(release.wait)
            return "from asyncio"

        loading = asyncio.ensure_future(cache.get_or_load("k", load))
        await started.wait()  # our flight lock is taken
        reader = asyncio.ensure_future(asyncio.to_thread(sync.get_or_load, "k", sync_load))
        await asyncio.sleep(0.05)  # the sync reader polls the copy meanwhile
        release.set()
        return await loading, await reader

    assert pair.run(test) == ("from asyncio", "from asyncio")
    assert sync_loads == []


def test_only_cache_aside_and_write_behind_on_redis() -> None:
    with pytest.raises(ConfigurationError, match="cache-aside or write-behind"):
        taskguard.aio.connect("redis://localhost:1").cache("w", ttl=5, strategy="write-around")
    with pytest.raises(ConfigurationError, match="Redis backend"):
        taskguard.aio.connect("memory://").cache("m", ttl=5)


def test_an_outage_falls_back_to_the_loader() -> None:
    async def main() -> None:
        async with taskguard.aio.connect("redis://127.0.0.1:1/0", prefix="x") as client:
            cache = client.cache("down", ttl=5)

            async def load() -> str:
                return "loaded"

            assert await cache.get("k", "default") == "default"
            assert await cache.get_or_load("k", load) == "loaded"
            with pytest.raises(BackendUnavailable):
                await cache.set("k", "v")

    asyncio.run(main())
