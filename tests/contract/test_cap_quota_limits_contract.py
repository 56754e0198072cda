"""Concurrency caps' slot counts and quotas' allowances set at run time (backend/limits.py,
read by slot.lua's and quota.lua's parse, and by the parking scripts): one contract on
the memory backend and on Redis."""

from __future__ import annotations

import json
import uuid

import pytest
from click.testing import CliRunner

import taskguard
from taskguard import events
from taskguard.backend.ops import SlotOp
from taskguard.backend.parking import Parking
from taskguard.backend.redis import RedisBackend
from taskguard.cli import taskguard as cli
from taskguard.guards.concurrency import Concurrency
from taskguard.guards.quota import Quota, QuotaLimiter

from .harness import REDIS_ONLY, Contract


@pytest.fixture
def client(contract: Contract) -> taskguard.Client:
    return taskguard.Client(contract.backend)


def unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:6]}"


def slot(client: taskguard.Client, spec: Concurrency, key: str | None = None) -> SlotOp:
    return spec.slot_op(client.keys, key, uuid.uuid4().hex, park=False)


def holders(client: taskguard.Client, spec: Concurrency, key: str | None, n: int) -> int:
    """How many of ``n`` callers get a slot of ``key`` at once (their slots kept)."""
    return sum(client.backend.admit([slot(client, spec, key)]).allowed for _ in range(n))


def test_a_cap_set_at_run_time_replaces_the_configured_one(client: taskguard.Client) -> None:
    name = unique("cap")
    spec = Concurrency(3, key="{tenant}", name=name)
    client.set_cap(name, 1)
    assert holders(client, spec, "a", 5) == 1
    client.set_cap(name, 4, key="b")  # a key's own wins over the every-key one
    assert holders(client, spec, "b", 6) == 4
    assert [(o.key, o.limit) for o in client.caps(name)] == [(None, 1), ("b", 4)]
    assert client.clear_cap(name)
    assert not client.clear_cap(name)
    assert holders(client, spec, "a", 5) == 2  # the code's 3, one held already
    assert client.clear_cap(name, key="b")
    assert client.caps(name) == []


def test_a_lowered_cap_admits_no_one_until_the_holders_fall_below_it(
    client: taskguard.Client,
) -> None:
    name = unique("lower")
    spec = Concurrency(3, name=name, ttl=60)
    held = [slot(client, spec) for _ in range(3)]
    assert all(client.backend.admit([op]).allowed for op in held)
    client.set_cap(name, 1)
    client.backend.release(held[:2])
    assert not client.backend.admit([slot(client, spec)]).allowed  # 1 holder, cap 1
    client.backend.release(held[2:])
    assert client.backend.admit([slot(client, spec)]).allowed


def test_a_run_time_cap_wins_over_per_key_values(client: taskguard.Client) -> None:
    name = unique("perkey")
    spec = Concurrency(1, key="{tenant}", name=name, per_key={"acme": 5})
    assert holders(client, spec, "acme", 6) == 5  # the code's per_key value
    client.set_cap(name, 2)
    assert holders(client, spec, "acme2", 6) == 2
    spec2 = Concurrency(1, key="{tenant}", name=name, per_key={"acme3": 5})
    assert holders(client, spec2, "acme3", 6) == 2  # the every-key one beats per_key too


def test_a_standalone_semaphore_follows_a_cap_set_at_run_time(client: taskguard.Client) -> None:
    name = unique("sem")
    semaphore = client.semaphore(name, limit=5)
    client.set_cap(name, 1)
    with semaphore.acquire(timeout=1):
        assert not semaphore.try_acquire().allowed
    assert client.clear_cap(name)


def test_a_quota_allowance_set_at_run_time_replaces_the_configured_one(
    client: taskguard.Client,
) -> None:
    name = unique("quota")
    quota = QuotaLimiter(client, Quota("5/day", key="{tenant}", name=name, per_key={"big": 9}))
    client.set_quota(name, "2/day")
    assert [quota.try_acquire(key="t1").allowed for _ in range(3)] == [True, True, False]
    assert quota.remaining(key="big") == 2  # wins over per_key
    client.set_quota(name, "3/d", key="t1")  # a key's own: one more call for t1
    assert quota.try_acquire(key="t1").allowed
    assert quota.remaining(key="t1") == 0
    assert [str(o) for o in client.quotas(name)] == ["2/day", "3/day"]
    assert client.clear_quota(name)
    assert client.clear_quota(name, key="t1")
    assert quota.remaining(key="t2") == 5


def test_an_allowance_for_another_period_is_ignored(client: taskguard.Client) -> None:
    name = unique("period")
    quota = QuotaLimiter(client, Quota("5/day", name=name))
    client.set_quota(name, "1/month")  # per month, not per day: not this quota's
    assert quota.remaining() == 5
    client.set_quota(name, "1/day")
    assert quota.remaining() == 1


def test_bad_values_are_refused(client: taskguard.Client) -> None:
    with pytest.raises(taskguard.ConfigurationError):
        client.set_cap("x", 0)
    with pytest.raises(taskguard.ConfigurationError, match="calls per day, week or month"):
        client.set_quota("x", "5/s")
    assert client.caps("x") == []
    assert client.quotas("x") == []


def test_cap_and_quota_changes_are_published_as_limit_changed_events(
    client: taskguard.Client,
) -> None:
    name = unique("audit")
    with events.subscribe(client, types=["limit_changed"], timeout=5) as stream:
        client.set_cap(name, 3, key="acme")
        client.set_quota(name, "100/week")
        client.clear_cap(name, key="acme")
        got = [stream.get(5) for _ in range(3)]
    assert all(event is not None for event in got)
    seen = [(e["kind"], e["action"], e["key"], e["limit"]) for e in got if e is not None]
    assert seen == [
        ("cap", "set", "acme", "3"),
        ("quota", "set", None, "100/week"),
        ("cap", "clear", "acme", None),
    ]


@REDIS_ONLY
def test_a_parked_task_is_handed_back_by_the_cap_set_at_run_time(
    contract: Contract, client: taskguard.Client
) -> None:
    """The lot counts its cap's free slots with the run-time count, as admission does."""
    assert isinstance(contract.backend, RedisBackend)
    parking = Parking(contract.backend)
    name = unique("parked")
    spec = Concurrency(1, name=name)
    holder = spec.slot_op(client.keys, None, "holder")
    assert client.backend.admit([holder]).allowed
    lim = (holder.overrides, holder.field)
    assert lim[0] is not None

    def park(ticket: str) -> list[bytes]:
        return parking.park(
            holder.key,
            mode="slot",
            limit=holder.limit,
            ticket=ticket,
            seq=1,
            payload=ticket.encode(),
            overrides=(lim[0], lim[1]),
        )

    assert park("a") == []  # cap 1, held: parked
    client.set_cap(name, 2)
    assert parking.hand_back(holder.key) == [b"a"]  # one more slot: handed back
    client.set_cap(name, 1)
    assert park("b") == []
    assert parking.counts() == {holder.key: 1}


@REDIS_ONLY
def test_the_cli_sets_shows_and_clears_caps_and_quotas(contract: Contract) -> None:
    name = unique("cli")
    base = ["--redis-url", str(contract.url), "--prefix", contract.prefix]
    run = CliRunner()
    done = run.invoke(cli, ["limit", "set", *base, name, "3", "--kind", "cap"])
    assert done.exit_code == 0, done.output
    assert f"concurrency cap {name!r}, every key: 3 slots from now on" in done.output
    done = run.invoke(
        cli, ["limit", "set", *base, name, "500/day", "--kind", "quota", "--key", "t1"]
    )
    assert done.exit_code == 0, done.output
    done = run.invoke(cli, ["limit", "set", *base, name, "10/s"])
    assert done.exit_code == 0, done.output
    done = run.invoke(cli, ["limit", "show", *base, name])
    assert done.output.splitlines() == [
        f"rate limit {name!r}, every bucket: 10/s (burst 1)",
        f"concurrency cap {name!r}, every key: 3 slots",
        f"quota {name!r}, key 't1': 500/day",
    ]
    done = run.invoke(cli, ["limit", "show", *base, name, "--json"])
    kinds = [(row["kind"], row["key"]) for row in json.loads(done.output)]
    assert kinds == [("rate", None), ("cap", None), ("quota", "t1")]
    assert run.invoke(cli, ["limit", "clear", *base, name, "--kind", "cap"]).exit_code == 0
    missing = run.invoke(cli, ["limit", "clear", *base, name, "--kind", "cap"])
    assert missing.exit_code == 1
    assert "no slot count was set" in missing.output
    number = run.invoke(cli, ["limit", "set", *base, name, "5"])
    assert number.exit_code == 2
    assert "--kind cap" in number.output
    burst = run.invoke(cli, ["limit", "set", *base, name, "5", "--kind", "cap", "--burst", "2"])
    assert burst.exit_code == 2
    bad = run.invoke(cli, ["limit", "set", *base, name, "5/s", "--kind", "quota"])
    assert bad.exit_code == 2
    assert "calls per day, week or month" in bad.output
