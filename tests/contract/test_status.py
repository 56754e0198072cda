"""``taskguard status`` and the admin commands against a real Redis: guard state made
through the public API (limiters, locks, a Lock guard's ops, semaphores, breakers, a
quota, parked tasks, write-behind caches and a drain pool) is read back by
:func:`taskguard.status.read_status` and by the CLI, under the test's own key prefix.

The reader's speed (10k locks and 1k buckets in well under a second) is measured by hand,
not asserted here: docs/status.md, "Cost", has the figure and how to measure it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

import taskguard
from taskguard import CircuitBreaker, Concurrency, Lock, Quota, QuotaLimiter, RateLimit
from taskguard.backend.parking import Parking
from taskguard.backend.redis import RedisBackend
from taskguard.cli import taskguard as cli
from taskguard.drain import DrainPool
from taskguard.errors import LockLost, StoreError
from taskguard.guards.breaker import Breaker
from taskguard.sinks.base import Record
from taskguard.sinks.sql import SQLStore
from taskguard.status import force_breaker, read_status, release_lock
from taskguard.testing import wait_until

from .harness import CLUSTER_TOO, REDIS_ONLY, Contract

pytestmark = CLUSTER_TOO


@pytest.fixture
def client(contract: Contract) -> taskguard.Client:
    return taskguard.connect(contract.backend)


def _fail() -> None:
    raise ConnectionError("down")


def _calls(breaker: Breaker, outcomes: Sequence[bool]) -> None:
    for ok in outcomes:
        with contextlib.suppress(ConnectionError, taskguard.CircuitOpen):
            breaker.call(lambda ok=ok: None if ok else _fail())


# ---------------------------------------------------------------- guards read back


@REDIS_ONLY
def test_rate_limit_buckets_show_their_backlog_and_known_levels(
    client: taskguard.Client,
) -> None:
    api = client.rate_limiter("api", "1/m", burst=5)
    for _ in range(3):
        assert api.try_acquire(key="tenant:1").allowed
    assert client.rate_limiter("mail", "1/h").try_acquire().allowed

    limits = [RateLimit("1/m", burst=5, name="api"), RateLimit("1/m", burst=5, name="api")]
    limits += [RateLimit("1/h", name="mail"), RateLimit("2/h", name="mail")]  # which one?
    found = read_status(client, limits=limits)
    by_name = {(b.name, b.key): b for b in found.rate_limits}
    tenant = by_name["api", "tenant:1"]
    assert (tenant.tokens, tenant.burst) == (2, 5)
    assert 179 < tenant.backlog <= 180  # 3 tokens spent at 1/min
    mail = by_name["mail", None]
    assert (mail.tokens, mail.burst) == (None, None)
    assert 3599 < mail.backlog <= 3600
    assert found.limits_known == ("api",)


@REDIS_ONLY
def test_locks_and_claims_show_owner_age_token_and_lease(
    client: taskguard.Client, contract: Contract
) -> None:
    held = client.lock("report", ttl=30, renew=False).acquire(timeout=1)
    backend = contract.backend
    for mode in ("while_executing", "until_executed"):  # a run-time lock, a claim
        guard = Lock(key="{doc}", name="proj.render", ttl=60, mode=mode)
        assert backend.admit(guard.task_ops(backend.keys, (), {"doc": "a:{1}"}, "task-7")).allowed

    found = read_status(client)
    locks = {(h.kind, h.name, h.key): h for h in found.locks}
    report = locks["lock", "report", None]
    assert report.owner == held.owner
    assert report.fencing_token == held.fencing_token
    assert report.age is not None
    assert 0 <= report.age < 5
    assert report.lease_left is not None
    assert 25 < report.lease_left <= 30
    render = locks["lock", "proj.render", "a:{1}"]
    assert render.owner.startswith("task-7:")
    claim = locks["unique", "proj.render", "a:{1}"]
    assert (claim.owner, claim.fencing_token, claim.age) == ("task-7", None, None)
    assert claim.lease_left is not None
    assert 55 < claim.lease_left <= 60


@REDIS_ONLY
def test_semaphores_show_their_live_holders(client: taskguard.Client, contract: Contract) -> None:
    partner = client.semaphore("partner", limit=3, ttl=20, renew=False)
    first, second = partner.try_acquire(), partner.try_acquire()
    assert first.allowed
    assert second.allowed
    cap = Concurrency(2, name="proj.sync", key="{tenant}", ttl=40)
    assert contract.backend.admit(
        cap.task_ops(contract.backend.keys, (), {"tenant": "t1"}, "t")
    ).allowed

    slots = {(s.name, s.key): s for s in read_status(client).slots}
    assert len(slots["partner", None].holders) == 2
    assert all(15 < h.lease_left <= 20 for h in slots["partner", None].holders)
    [holder] = slots["proj.sync", "t1"].holders
    assert holder.owner.startswith("t:")


@REDIS_ONLY
def test_breakers_show_state_and_window_counts(client: taskguard.Client) -> None:
    counted = client.circuit_breaker("counted", window=10, minimum_calls=10)
    _calls(counted, [True, False, True, False, False])
    tripped = client.circuit_breaker("tripped", consecutive_failures=2, open_for=30)
    _calls(tripped, [False, False])
    timed = client.circuit_breaker("timed", window=30, window_type="time", minimum_calls=50)
    _calls(timed, [True, True, False])
    forced = client.circuit_breaker("forced")
    forced.force_open()

    breakers = {b.name: b for b in read_status(client).breakers}
    assert (breakers["counted"].state, breakers["counted"].window) == ("closed", "count")
    assert (breakers["counted"].calls, breakers["counted"].failures) == (5, 3)
    assert breakers["counted"].consecutive_failures == 2
    assert (breakers["tripped"].state, breakers["tripped"].opens) == ("open", 1)
    assert breakers["tripped"].open_left is not None
    assert 25 < breakers["tripped"].open_left <= 30
    assert (breakers["timed"].window, breakers["timed"].calls) == ("time", 3)
    assert breakers["timed"].failures == 1
    assert breakers["forced"].state == "forced_open"


@REDIS_ONLY
def test_quotas_show_their_use_in_the_window(client: taskguard.Client) -> None:
    sms = QuotaLimiter(client, Quota("10/day", name="sms"))
    for _ in range(3):
        assert sms.try_acquire(key="+44").allowed

    [usage] = read_status(client).quotas
    assert (usage.name, usage.key, usage.used) == ("sms", "+44", 3)
    assert usage.resets_in is not None
    assert 0 < usage.resets_in <= 86_400


@REDIS_ONLY
def test_parked_tasks_are_counted_per_guard_key(client: taskguard.Client) -> None:
    backend = client.backend
    assert isinstance(backend, RedisBackend)
    cap = Concurrency(1, name="proj.export", ttl=30)
    holder = cap.slot_op(backend.keys, None, "holder")
    assert backend.admit([holder]).allowed
    parking = Parking(backend)
    for seq, ticket in enumerate(["t1", "t2"]):
        parking.park(holder.key, mode="slot", limit=1, ticket=ticket, seq=seq, payload=b"m")

    parked = read_status(client).parked
    [lot] = parked.lots
    assert (lot.kind, lot.name, lot.key, lot.tasks) == ("slots", "proj.export", None, 2)
    assert lot.guard_key == holder.key
    assert client.parked() == {holder.key: 2}  # the same figure as Client.parked()
    assert parked.in_flight == 0

    assert backend.release([holder]) == [2]
    assert parking.hand_back(holder.key) == [b"m"]
    assert read_status(client).parked.in_flight == 1


class PoisonStore(SQLStore):
    """SQLite, refusing for good any batch holding the key ``bad``."""

    def write(self, namespace: str, records: Sequence[Record]) -> None:
        if any(record.key == "bad" for record in records):
            raise StoreError("key 'bad' refused", transient=False)
        super().write(namespace, records)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PoisonStore]:
    sqlite = PoisonStore(f"sqlite:///{tmp_path / 'status.db'}")
    yield sqlite
    sqlite.close()


@REDIS_ONLY
def test_write_behind_backlog_dead_letters_pools_and_leases(
    client: taskguard.Client, store: PoisonStore
) -> None:
    queued = client.cache("queued", ttl=60, strategy="write-behind", store=store, partitions=2)
    for i in range(5):
        queued.set(f"k{i}", i)
    drained = client.cache("drained", ttl=60, strategy="write-behind", store=store, partitions=2)
    drained.set("good", 1)
    drained.set("bad", 2)

    with DrainPool(client, store, namespaces=["drained"], lease_ttl=10, claim_idle=1) as pool:
        assert pool.wait_idle(timeout=20)
        wait_until(lambda: len(pool.held()) == 2, message="the pool holds both partitions")
        found = read_status(client)

    spaces = {ns.name: ns for ns in found.write_behind}
    assert (spaces["queued"].backlog, spaces["queued"].partitions) == (5, 2)
    assert spaces["queued"].oldest_age >= 0
    assert spaces["queued"].leases == ()
    assert (spaces["drained"].backlog, spaces["drained"].dead_letters) == (0, 1)
    assert sorted(lease.partition for lease in spaces["drained"].leases) == [0, 1]
    assert {lease.owner for lease in spaces["drained"].leases} == {pool.owner}
    [live] = found.drain_pools
    assert live.name == pool.owner
    assert live.expires_in > 0


@REDIS_ONLY
def test_reading_scans_and_writes_nothing(
    client: taskguard.Client, contract: Contract, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.lock("report", ttl=30, renew=False).acquire(timeout=1)
    client.rate_limiter("api", "1/m").try_acquire()
    _calls(client.circuit_breaker("geo", window=5), [True, False])
    assert contract.client is not None
    before = sorted(contract.client.scan_iter(f"{contract.prefix}:*"))

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("KEYS must never be used")

    monkeypatch.setattr(redis.Redis, "keys", refuse)
    found = read_status(client)
    assert (len(found.locks), len(found.rate_limits), len(found.breakers)) == (1, 1, 1)
    assert sorted(contract.client.scan_iter(f"{contract.prefix}:*")) == before


@REDIS_ONLY
def test_another_prefix_is_not_read(client: taskguard.Client, contract: Contract) -> None:
    client.lock("report", ttl=30, renew=False).acquire(timeout=1)
    other = taskguard.connect(contract.url, prefix=f"{contract.prefix}x")
    try:
        assert read_status(other).locks == ()
    finally:
        other.close()


# ---------------------------------------------------------------- admin, on both backends


def test_release_lock_frees_it_and_fences_the_old_holder(contract: Contract) -> None:
    client = taskguard.connect(contract.backend)
    held = client.lock("report", ttl=30, renew=False).acquire(timeout=1)
    done = release_lock(client, "report")
    assert (done.owner, done.released) == (held.owner, True)
    if contract.kind == "redis":
        assert done.fencing_token == held.fencing_token
    assert not client.lock("report").locked()
    with pytest.raises(LockLost):
        held.release()
    nxt = client.lock("report", renew=False).acquire(timeout=1)
    assert nxt.fencing_token > held.fencing_token
    assert release_lock(client, "report", "other-key").owner is None


@REDIS_ONLY
def test_release_lock_hands_back_a_task_parked_on_it(contract: Contract) -> None:
    backend = contract.backend
    assert isinstance(backend, RedisBackend)
    guard = Lock(key="{doc}", name="proj.render", ttl=30)
    [op] = guard.task_ops(backend.keys, (), {"doc": "7"}, "holder")
    assert backend.admit([op]).allowed
    Parking(backend).park(op.key, mode="lease", limit=1, ticket="t1", seq=1, payload=b"m")

    done = release_lock(backend, "proj.render", "7")
    assert (done.released, done.parked) == (True, True)
    assert contract.client is not None
    # Marked due now: the next sweep, in any worker, hands the task back.
    assert contract.client.zscore(backend.keys.park_due(op.key), backend.keys.park_lot(op.key)) == 0
    assert Parking(backend).sweep() == [b"m"]


def test_release_lock_finds_a_lock_placed_by_its_tag(contract: Contract) -> None:
    backend = contract.backend
    guard = Lock(key="{doc}", tag="{customer}", name="proj.render", ttl=30)
    [op] = guard.task_ops(backend.keys, (), {"doc": "7", "customer": "acme"}, "holder")
    assert backend.admit([op]).allowed
    assert op.key == backend.keys.lock("proj.render", "7", tag="acme")
    if backend.keys.spread:  # on a Cluster the tag places it: the key alone misses it
        assert release_lock(backend, "proj.render", "7").owner is None
    done = release_lock(backend, "proj.render", "7", tag="acme")
    assert done.released
    assert done.owner is not None
    assert done.owner.startswith("holder")
    assert backend.owner(op.key) is None


def test_force_breaker_changes_the_shared_state(contract: Contract) -> None:
    client = taskguard.connect(contract.backend)
    geo = client.circuit_breaker("geo", consecutive_failures=1, open_for=30)
    _calls(geo, [False])
    assert geo.state == "open"
    closed = force_breaker(client, "geo", "close")
    assert (closed.before, closed.after) == ("open", "closed")
    assert closed.existed is (None if contract.kind == "memory" else True)
    assert force_breaker(client, "geo", "open").after == "forced_open"
    assert geo.state == "forced_open"
    assert force_breaker(client, "geo", "reset").after == "closed"
    assert geo.state == "closed"


@REDIS_ONLY
def test_force_breaker_tells_hot_path_views_to_refresh(contract: Contract) -> None:
    backend = contract.backend
    assert isinstance(backend, RedisBackend)
    channel = backend.breaker_channel()  # sharded on Redis Cluster, with the guard tag
    listener = backend.pubsub(channel)
    backend.subscribe(listener, channel)
    try:
        change = force_breaker(backend, "never-used", "open")
        message = wait_until(lambda: listener.get_message(timeout=0.1), timeout=5)
    finally:
        listener.close()
    assert message["data"] == b"never-used|refresh|0"
    assert change.existed is False


# ---------------------------------------------------------------- the CLI


def invoke(contract: Contract, *args: str) -> Any:
    assert contract.url is not None
    return CliRunner().invoke(
        cli, [*args, "--redis-url", contract.url, "--prefix", contract.prefix]
    )


@REDIS_ONLY
def test_status_command_prints_tables_and_json(
    client: taskguard.Client, contract: Contract
) -> None:
    client.lock("report", ttl=30, renew=False).acquire(timeout=1)
    _calls(client.circuit_breaker("geo", consecutive_failures=1), [False])

    tables = invoke(contract, "status")
    assert tables.exit_code == 0, tables.output
    assert f"prefix {contract.prefix}" in tables.output
    assert "report" in tables.output
    assert "geo" in tables.output

    doc = json.loads(invoke(contract, "status", "--json").output)
    [status] = doc["prefixes"]
    assert status["prefix"] == contract.prefix
    assert [lock["name"] for lock in status["locks"]] == ["report"]
    assert [(b["name"], b["state"]) for b in status["breakers"]] == [("geo", "open")]


@REDIS_ONLY
def test_lock_release_needs_force(client: taskguard.Client, contract: Contract) -> None:
    held = client.lock("report", ttl=30, renew=False).acquire(timeout=1)

    refused = invoke(contract, "lock", "release", "report")
    assert refused.exit_code == 1
    assert f"is held by {held.owner}" in refused.output
    assert "add --force" in refused.output
    assert client.lock("report").locked()

    done = invoke(contract, "lock", "release", "report", "--force")
    assert done.exit_code == 0, done.output
    assert f"held by {held.owner}, fencing token {held.fencing_token}" in done.output
    assert not client.lock("report").locked()

    again = invoke(contract, "lock", "release", "report", "--force")
    assert again.exit_code == 1
    assert "is not held" in again.output


@REDIS_ONLY
def test_lock_release_of_a_keyed_guard_lock(contract: Contract) -> None:
    backend = contract.backend
    guard = Lock(key="{doc}", name="proj.render", ttl=30)
    assert backend.admit(guard.task_ops(backend.keys, (), {"doc": "a:7"}, "t9")).allowed
    done = invoke(contract, "lock", "release", "proj.render", "a:7", "--force")
    assert done.exit_code == 0, done.output
    assert "released lock 'proj.render' (key 'a:7'), held by t9:" in done.output
    assert backend.owner(backend.keys.lock("proj.render", "a:7")) is None


@REDIS_ONLY
def test_breaker_commands(client: taskguard.Client, contract: Contract) -> None:
    geo = Breaker(client.backend, CircuitBreaker("geo"))
    _calls(geo, [True])

    opened = invoke(contract, "breaker", "open", "geo")
    assert opened.exit_code == 0, opened.output
    assert "breaker 'geo': closed -> forced_open" in opened.output
    assert geo.state == "forced_open"
    closed = invoke(contract, "breaker", "close", "geo")
    assert "breaker 'geo': forced_open -> closed" in closed.output
    assert geo.state == "closed"
    assert invoke(contract, "breaker", "reset", "geo").exit_code == 0
    assert contract.client is not None
    assert not contract.client.exists(contract.backend.keys.breaker("geo"))

    typo = invoke(contract, "breaker", "open", "gep")
    assert typo.exit_code == 0
    assert "note: no breaker 'gep' had state" in typo.output
