"""Chaos fixtures: a Redis the test may crash or flush, PostgreSQL it may stop, fleets it
may kill (see harness.py). Everything a test starts, its teardown stops, pass or fail."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskguard.testing import PostgresServer

from .harness import ChaosFleet, CrashableRedis
from .writebehind import WriteBehindRun


@pytest.fixture
def crashable_redis() -> Iterator[CrashableRedis]:
    server = CrashableRedis()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def module_postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster for a module's tests (a test may stop it)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def private_postgres(module_postgres: PostgresServer) -> PostgresServer:
    """The module's cluster, running (a test that stopped it and failed left it down)."""
    if not module_postgres.is_running():
        module_postgres.start()
    return module_postgres


@pytest.fixture
def chaos_fleet(redis_url: str) -> Iterator[Callable[..., ChaosFleet]]:
    """Makes fleets whose guard state lives at ``guard_url``; stops them after the test."""
    fleets: list[ChaosFleet] = []

    def make(guard_url: str, **kwargs: Any) -> ChaosFleet:
        fleet = ChaosFleet(broker_url=redis_url, guard_url=guard_url, **kwargs)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop()
        fleet.cleanup()
        fleet.celery.close()


@pytest.fixture
def writebehind(tmp_path: Path) -> Iterator[Callable[[str, str], WriteBehindRun]]:
    """Makes write-behind runs (writers, drains) on the given Redis and store; stops them
    all and drops their tables after the test."""
    runs: list[WriteBehindRun] = []

    def make(redis_url: str, store_url: str) -> WriteBehindRun:
        run = WriteBehindRun(redis_url, store_url, tmp_path)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.close()
