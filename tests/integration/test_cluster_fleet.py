"""Keyed guards with their state on a Redis Cluster, across real workers (issue 14,
part 2): a per-tenant cap and a per-document rate limit live in two slots, so each
admission is two calls with the earlier slot given back when the cap refuses; refused
tasks park under the tenant's own hash tag and are handed back on release. Invariants
only: every task runs exactly once, one at a time per tenant, and nothing stays parked.
"""

from __future__ import annotations

from collections.abc import Callable

import taskguard
from taskguard.testing import wait_until

from .conftest import Fleet
from .test_concurrency_fleet import max_overlap
from .test_parking_fleet import APP, assert_exactly_once, runs


def test_a_keyed_cap_on_a_cluster_parks_and_runs_exactly_once(
    fleet_factory: Callable[..., Fleet], redis_cluster_url: str
) -> None:
    fleet = fleet_factory(app=APP, guard_url=redis_cluster_url).start(count=1, concurrency=4)
    client = taskguard.connect(redis_cluster_url, prefix=fleet.prefix)
    try:
        assert client.backend.keys.spread
        results = [fleet.send("tenant_doc", "t1", f"doc-{i}", i, 0.05) for i in range(24)]
        results += [fleet.send("tenant_doc", "t2", f"doc-{i}", 100 + i, 0.05) for i in range(8)]
        wait_until(lambda: sum(client.parked().values()) >= 3, timeout=30)
        expected = [*range(24), *range(100, 108)]
        assert sorted(r.get(timeout=120) for r in results) == expected
        wait_until(lambda: client.parked() == {}, timeout=10)
    finally:
        client.close()
    records = runs(fleet, "tenant_doc")
    assert_exactly_once(records, {r.id for r in results})
    for tenant in ("t1", "t2"):
        mine = [(r["start"], r["end"]) for r in records if r["key"] == tenant]
        assert max_overlap(mine) == 1, tenant
    assert any(r["deferrals"] for r in records), "some tasks must have parked"
