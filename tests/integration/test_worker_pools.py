"""Guards on Celery's other worker pools: threads and solo keep the guarantees prefork
does (a fleet-wide cap, a lock whose lease the heartbeat renews past its ttl), and a
gevent worker with guarded tasks refuses to start, naming the pool."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest

from .conftest import Fleet, refused_start
from .test_concurrency_fleet import max_overlap, slot_records

pytestmark = pytest.mark.integration

#: (pool, processes or threads per worker): solo runs one task at a time per worker.
POOLS = [("threads", 3), ("solo", 1)]


@pytest.fixture(scope="module", params=POOLS, ids=[pool for pool, _ in POOLS])
def fleet(request: pytest.FixtureRequest, fleet_factory: Callable[..., Fleet]) -> Fleet:
    pool, concurrency = request.param
    return fleet_factory().start(count=2, concurrency=concurrency, pool=pool)


def test_cap_and_lease_hold(fleet: Fleet) -> None:
    """A lock held 3 s past its 2 s ttl keeps its lease (the heartbeat renews it on this
    pool) while the other executors share a cap of 1 fleet-wide."""
    held = fleet.send("hold2", "pools", 3.0)
    results = [fleet.send("crash_slot", i, 0.02) for i in range(24)]
    assert sorted(r.get(timeout=60) for r in results) == list(range(24))
    ids = {r.id for r in results}
    records = [r for r in slot_records(fleet, "crash_slot") if r["id"] in ids]
    assert len(records) == 24
    assert max_overlap([(r["start"], r["end"]) for r in records]) == 1
    assert held.get(timeout=30) is False, "the lock's lease was lost"
    assert not fleet.records("lost")


@pytest.mark.skipif(importlib.util.find_spec("gevent") is None, reason="gevent not installed")
def test_gevent_worker_with_guarded_tasks_refuses_to_start(
    fleet_factory: Callable[..., Fleet],
) -> None:
    _, line = refused_start(fleet_factory().worker(concurrency=4, pool="gevent"))
    assert "[field 'pool'] the gevent pool runs tasks on green threads" in line
    assert "tests.integration.apps.guarded." in line
