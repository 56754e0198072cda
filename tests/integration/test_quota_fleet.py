"""A calendar quota across real worker processes on a real Redis: exactly the quota runs,
the rest is deferred to the reset, and each key counts on its own."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

import taskguard
from taskguard import Quota, QuotaLimiter

from .conftest import Fleet

LIMIT = 25  # Quota("25/day", key="{tenant}") on apps/guarded.py's `metered`


@pytest.fixture(scope="module")
def fleet(fleet_factory: Callable[..., Fleet]) -> Fleet:
    # A used-up daily quota defers to its reset, hours away: in steps of at most 60 s,
    # for a day at most (the deferred messages simply wait; this test never sees them run).
    settings = {"max_deferral_delay": 60, "max_deferral_age": 86400, "deferral_jitter": 0.5}
    return fleet_factory(settings=settings).start(count=2, concurrency=2)


@pytest.mark.both_brokers
def test_exactly_the_quota_runs_across_workers(fleet: Fleet) -> None:
    sent = [("big", i) for i in range(60)] + [("small", i) for i in range(10)]
    for tenant, i in sent:
        fleet.send("metered", tenant, i)

    def settled(_: list[dict[str, object]]) -> bool:
        runs = [r for r in fleet.records("runs") if str(r["name"]).endswith(".metered")]
        deferred = [d for d in fleet.records("deferred") if str(d["name"]).endswith(".metered")]
        return len(runs) + len(deferred) >= len(sent)

    fleet.wait_for("runs", settled, timeout=90)
    runs = [r for r in fleet.records("runs") if r["name"].endswith(".metered")]
    deferred = [d for d in fleet.records("deferred") if d["name"].endswith(".metered")]
    assert Counter(r["tenant"] for r in runs) == {"big": LIMIT, "small": 10}
    assert len({r["id"] for r in runs}) == len(runs)  # nothing ran twice
    assert len(deferred) == 60 - LIMIT  # every refused run of "big" waits for the reset
    assert all(d["delay"] >= 59 for d in deferred)  # to the reset: a whole step, not a retry
    assert len({r["pid"] for r in runs}) >= 2, "several worker processes took part"

    # The count lives in Redis, shared by the fleet; the standalone limiter reads it.
    client = taskguard.connect(fleet.guard_url, prefix=fleet.prefix)
    spec = Quota("25/day", name=f"{fleet.app}.metered")
    quota = QuotaLimiter(client, spec)
    assert quota.remaining("big") == 0
    assert quota.remaining("small") == LIMIT - 10
    assert not quota.try_acquire("big").allowed
    client.close()
