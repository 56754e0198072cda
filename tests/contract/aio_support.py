"""What the asyncio contract and interoperability tests share: a sync and an asyncio
client on the test Redis under the test's prefix, and waiting on conditions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import redis

import taskguard
import taskguard.aio
from taskguard.aio import AsyncClient
from taskguard.heartbeat import heartbeat_for

T = TypeVar("T")


@dataclass
class Pair:
    """A sync client and the URL and prefix an asyncio one is built on (in the test's
    own event loop: ``redis.asyncio`` connections belong to one loop)."""

    url: str
    prefix: str
    sync: taskguard.Client
    inspect: redis.Redis

    def aio(self) -> AsyncClient:
        # Named connections: blocked_waiters() counts this test's BLPOPs only.
        options = {"client_name": self.prefix}
        return taskguard.aio.connect(self.url, prefix=self.prefix, redis_options=options)

    def run(self, test: Callable[[AsyncClient], Awaitable[T]]) -> T:
        """Run ``test`` with a fresh asyncio client in a fresh event loop."""

        async def main() -> T:
            async with self.aio() as client:
                return await test(client)

        return asyncio.run(main())

    def blocked_waiters(self) -> int:
        """Connections of this test blocked in ``BLPOP`` right now (either API)."""
        return sum(
            1
            for info in self.inspect.client_list()
            if info.get("name") == self.prefix and "b" in info.get("flags", "")
        )

    def close(self) -> None:
        heartbeat_for(self.sync.backend).stop()
        self.sync.close()
        self.inspect.close()


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (without blocking the loop) until ``check()`` holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {check}")
        await asyncio.sleep(0.01)
