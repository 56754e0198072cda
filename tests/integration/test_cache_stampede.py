"""Stampede protection: 50 concurrent get_or_load calls on a cold key run the loader once,
from threads of one process and from threads of several processes."""

from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

import taskguard

CALLERS = 50
PROCESSES = 4


def test_fifty_threads_on_a_cold_key_load_once(redis_url: str, tg_prefix: str) -> None:
    cache = taskguard.connect(redis_url, prefix=tg_prefix).cache("stampede", ttl=60)
    calls = 0
    guard = threading.Lock()
    start = threading.Barrier(CALLERS)

    def loader() -> dict[str, int]:
        nonlocal calls
        with guard:
            calls += 1
        time.sleep(0.3)  # a slow query: every other caller arrives while it runs
        return {"answer": 42}

    def call(_: int) -> Any:
        start.wait()
        return cache.get_or_load("cold", loader)

    with ThreadPoolExecutor(CALLERS) as pool:
        results = list(pool.map(call, range(CALLERS)))
    assert calls == 1
    assert results == [{"answer": 42}] * CALLERS


def _process(redis_url: str, prefix: str, threads: int) -> None:
    client = redis.Redis.from_url(redis_url)
    cache = taskguard.connect(redis_url, prefix=prefix).cache("stampede", ttl=60)

    def loader() -> str:
        client.incr(f"{prefix}:test:loads")
        time.sleep(0.5)  # a slow query: every other caller arrives while it runs
        return "loaded"

    client.incr(f"{prefix}:test:ready")
    while not client.exists(f"{prefix}:test:go"):  # every process starts on one signal
        time.sleep(0.005)
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda _: cache.get_or_load("cold", loader), range(threads)))
    if results != ["loaded"] * threads:
        raise SystemExit(f"unexpected results {results}")


def test_fifty_callers_in_several_processes_load_once(
    redis_url: str, tg_prefix: str, redis_client: redis.Redis
) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_process, args=(redis_url, tg_prefix, CALLERS // PROCESSES))
        for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 60
    while int(redis_client.get(f"{tg_prefix}:test:ready") or 0) < PROCESSES:
        assert time.monotonic() < deadline, "worker processes did not start"
        time.sleep(0.02)
    redis_client.set(f"{tg_prefix}:test:go", 1)
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0] * PROCESSES
    assert redis_client.get(f"{tg_prefix}:test:loads") == b"1"
