"""Rate limits set at run time (backend/limits.py, read by gcra.lua's parse): one contract
on the memory backend and on Redis."""

from __future__ import annotations

import time
import uuid

import pytest
from click.testing import CliRunner

import taskguard
from taskguard.cli import taskguard as cli
from taskguard.guards.ratelimit import RateLimit

from .harness import REDIS_ONLY, Contract


def passes(client: taskguard.Client, spec: RateLimit, key: str | None, n: int) -> int:
    """How many of ``n`` back-to-back calls on bucket ``key`` are admitted."""
    op = spec.op(client.keys, key)
    return sum(client.backend.admit([op]).allowed for _ in range(n))


@pytest.fixture
def client(contract: Contract) -> taskguard.Client:
    return taskguard.Client(contract.backend)


def test_a_rate_set_at_run_time_replaces_the_configured_one(client: taskguard.Client) -> None:
    name = f"api-{uuid.uuid4().hex[:6]}"
    spec = RateLimit("1/h", name=name)
    assert passes(client, spec, None, 5) == 1  # the configured rate
    # 1/m: no token comes back during the 20 calls, however slow the machine.
    client.set_limit(name, "1/m", burst=10)
    assert passes(client, RateLimit("1/h", name=name), "x", 20) == 10
    assert client.clear_limit(name)
    assert not client.clear_limit(name)
    assert passes(client, spec, "y", 5) == 1
    assert client.limits(name) == []


def test_a_bucket_s_own_rate_wins_over_the_all_buckets_one(client: taskguard.Client) -> None:
    name = f"tenant-{uuid.uuid4().hex[:6]}"
    spec = RateLimit("1/h", key="{tenant}", name=name)
    client.set_limit(name, "1/h", burst=2)
    client.set_limit(name, "1/m", burst=5, key="premium")
    assert passes(client, spec, "premium", 10) == 5
    assert passes(client, spec, "free", 10) == 2
    shown = client.limits(name)
    assert [(o.key, o.burst) for o in shown] == [(None, 2), ("premium", 5)]
    assert shown[1].per_second == pytest.approx(1 / 60)


def test_a_burst_below_the_call_s_cost_still_lets_it_pass(client: taskguard.Client) -> None:
    name = f"cost-{uuid.uuid4().hex[:6]}"
    client.set_limit(name, "100/s", burst=1)
    spec = RateLimit("1/h", burst=3, name=name)
    op = spec.op(client.keys, None, cost=3)
    assert client.backend.admit([op]).allowed


@REDIS_ONLY
def test_the_cli_sets_shows_and_clears_a_limit(contract: Contract) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    base = ["--redis-url", str(contract.url), "--prefix", contract.prefix]
    run = CliRunner()
    done = run.invoke(cli, ["limit", "set", *base, name, "20/s", "--burst", "4"])
    assert done.exit_code == 0, done.output
    assert f"rate limit {name!r}, every bucket: 20/s (burst 4)" in done.output
    done = run.invoke(cli, ["limit", "set", *base, name, "5/m", "--key", "t1"])
    assert done.exit_code == 0, done.output
    done = run.invoke(cli, ["limit", "show", *base, name])
    assert done.output.splitlines() == [
        f"rate limit {name!r}, every bucket: 20/s (burst 4)",
        f"rate limit {name!r}, bucket 't1': 0.0833333/s (burst 1)",
    ]
    assert run.invoke(cli, ["limit", "clear", *base, name]).exit_code == 0
    missing = run.invoke(cli, ["limit", "clear", *base, name])
    assert missing.exit_code == 1
    assert "no rate was set" in missing.output
    bad = run.invoke(cli, ["limit", "set", *base, name, "fast"])
    assert bad.exit_code == 2
    assert "expected 'N/s'" in bad.output


def test_every_change_is_published_as_a_limit_changed_event(client: taskguard.Client) -> None:
    from taskguard import events

    name = f"audit-{uuid.uuid4().hex[:6]}"
    with events.subscribe(client, types=["limit_changed"], timeout=5) as stream:
        client.set_limit(name, "20/s", burst=2, key="acme")
        client.clear_limit(name, key="acme")
        set_, cleared = stream.get(5), stream.get(5)
    assert set_ is not None
    assert cleared is not None
    assert (set_["name"], set_["action"], set_["key"], set_["rate"], set_["burst"]) == (
        name,
        "set",
        "acme",
        "20/s",
        2,
    )
    assert (cleared["action"], cleared["rate"]) == ("clear", None)


@REDIS_ONLY
def test_a_limit_set_in_another_process_applies_within_a_second(contract: Contract) -> None:
    # A bucket that no limit set at run time applied to is admitted without reading them
    # for up to a second (one command less per decision); then it reads them again.
    name = f"seen-{uuid.uuid4().hex[:6]}"
    here = taskguard.Client(contract.backend)
    elsewhere = taskguard.connect(str(contract.url), prefix=contract.prefix)
    limiter = here.rate_limiter(name, "1000/s", burst=1000)
    assert limiter.try_acquire().allowed  # reads: none set, so none read for a while
    elsewhere.set_limit(name, "1/h", burst=1)
    deadline = time.monotonic() + 1.0 + 2.0  # the recheck interval, and room for a slow CI
    while True:  # until a refusal says "an hour": the new rate, not the code's 1 ms
        decision = limiter.try_acquire()
        if not decision.allowed and decision.retry_after > 60:
            break
        assert time.monotonic() < deadline, "the limit set elsewhere never applied"
    assert elsewhere.clear_limit(name)
    elsewhere.backend.close()
