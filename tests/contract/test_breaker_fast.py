"""The breaker's fast paths (scripts/fast/) answer as admit.lua and release.lua do.

Twin breakers (same settings, different keys) of a real Redis take the same seeded random
sequence of calls and outcomes: one through the general scripts, one through the scripts
with the fast path in front. After every step the replies and everything stored (state
hash, window, probes) must be the same. Breakers stay open for an hour, so no transition
depends on when a twin's call lands; forced states and resets are applied to both.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from taskguard.backend.lua import Script, load_script
from taskguard.backend.ops import BreakerOp
from taskguard.backend.wire import admit_call, encode, queue_breaker_action, script_for
from taskguard.guards.breaker import _with_mode
from taskguard.guards.breaker_spec import CircuitBreaker
from taskguard.keys import KeySchema
from taskguard.testing.servers import RedisServer

GENERAL = {
    "admit": load_script("admit", ["ops", "breaker"]),
    "release": load_script("release", ["ops", "breaker"]),
}
#: Stored times (open until, probe leases) of the twins may differ by this many ms.
SLACK_MS = 5_000

SETTINGS: list[dict[str, Any]] = [
    {"window": 4, "minimum_calls": 2, "failure_rate": 0.5},
    {"window": 3, "failure_rate": 0.7, "slow_call_rate": 0.5, "consecutive_failures": 2},
    {"window": 5, "failure_rate": 1.0, "consecutive_failures": 3, "half_open_probes": 2},
    {"window": 2, "window_type": "time", "failure_rate": 0.5},
]


@pytest.fixture
def client(redis_url: str, tg_prefix: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        yield client


def _fast(name: str, op: BreakerOp) -> Script:
    script = script_for(name, [op])
    assert script.head == f"fast/breaker_{name}"
    return script


def _admit(client: redis.Redis, op: BreakerOp, fast: bool) -> list[Any]:
    script, keys, args = admit_call([op], 0.0)
    if not fast:
        script = GENERAL["admit"]
    return list(script(client, keys, args))


def _release(client: redis.Redis, op: BreakerOp, fast: bool) -> list[Any]:
    keys, args = encode([op], release=True)
    script = _fast("release", op) if fast else GENERAL["release"]
    return list(script(client, keys, args))


def _stored(client: redis.Redis, op: BreakerOp) -> dict[str, Any]:
    state = client.hgetall(op.key)
    if client.type(op.window_key) == "list":
        window: Any = client.lrange(op.window_key, 0, -1)
    else:
        window = client.hgetall(op.window_key)
    probes = client.zrange(op.probes_key, 0, -1, withscores=True)
    return {
        "state": state,
        "window": window,
        "probes": probes,
        "expires": client.pttl(op.key) > 0,
    }


def _same(general: dict[str, Any], fast: dict[str, Any]) -> None:
    assert abs(int(general["state"].pop("until", 0)) - int(fast["state"].pop("until", 0))) < (
        SLACK_MS
    )
    assert general["state"] == fast["state"]
    assert general["window"] == fast["window"]
    assert [m for m, _ in general["probes"]] == [m for m, _ in fast["probes"]]
    for (_, a), (_, b) in zip(general["probes"], fast["probes"], strict=True):
        assert abs(a - b) < SLACK_MS
    assert general["expires"] == fast["expires"]


def _replies_agree(general: list[Any], fast: list[Any]) -> None:
    if general[:1] == [0] and len(general) >= 4:  # a refusal carries a wait in µs
        assert abs(general[1] - fast[1]) < SLACK_MS * 1000
        general, fast = [general[0], *general[2:]], [fast[0], *fast[2:]]
    assert general == fast


def _apply(client: redis.Redis, op: BreakerOp, action: str) -> None:
    pipe = client.pipeline(transaction=True)
    queue_breaker_action(pipe, op, action)
    pipe.execute()


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fast_paths_store_and_answer_as_the_general_scripts(
    client: redis.Redis, tg_prefix: str, settings: dict[str, Any], seed: int
) -> None:
    rng = random.Random(seed)
    spec = CircuitBreaker("twin", open_for=3600, **settings)
    twins = {
        fast: spec.call_op(KeySchema(f"{tg_prefix}:{'fast' if fast else 'general'}"), "-")
        for fast in (False, True)
    }
    held: list[tuple[str, dict[bool, BreakerOp]]] = []
    for step in range(160):
        roll = rng.random()
        if roll < 0.04:
            action = rng.choice(["force_open", "disable", "force_close", "reset"])
            for op in twins.values():
                _apply(client, op, action)
        elif roll < 0.5 or not held:
            owner = f"o{step}"
            ops = {fast: _with_mode(op, "check") for fast, op in twins.items()}
            ops = {
                fast: BreakerOp(
                    op.key, op.window_key, op.probes_key, owner, op.mode, op.params, op.probe_ttl
                )
                for fast, op in ops.items()
            }
            replies = {fast: _admit(client, op, fast) for fast, op in ops.items()}
            _replies_agree(replies[False], replies[True])
            if replies[False][0]:
                held.append((owner, ops))
        else:
            _, ops = held.pop(rng.randrange(len(held)))
            code = rng.choice("sssssSfFi")
            replies = {
                fast: _release(client, _with_mode(op, code), fast) for fast, op in ops.items()
            }
            assert replies[False] == replies[True]
        _same(_stored(client, twins[False]), _stored(client, twins[True]))


@pytest.fixture
def private() -> Iterator[redis.Redis]:
    """A throwaway server: its command counts are this test's alone."""
    with RedisServer() as server, redis.Redis.from_url(server.url) as client:
        yield client


def test_the_fast_paths_are_taken(private: redis.Redis) -> None:
    """A closed breaker's admission and success need no library: the fast scripts answer
    with as few commands as their heads run (counted by the server)."""
    client = private
    op = CircuitBreaker("fast").call_op(KeySchema("tgt"), "o")
    for _ in range(25):  # fills the count window (20) with successes
        assert _admit(client, op, True)[0] == 1
        assert _release(client, _with_mode(op, "s"), True) == [0]
    before = client.info("commandstats")
    assert _admit(client, op, True) == [1, 0, 0, 0, 0]
    assert _release(client, _with_mode(op, "s"), True) == [0]
    after = client.info("commandstats")

    def calls(command: str) -> int:
        key = f"cmdstat_{command}"
        return int(after.get(key, {}).get("calls", 0)) - int(before.get(key, {}).get("calls", 0))

    assert calls("time") == 0  # the general scripts read TIME on every admission
    assert calls("hmget") == 2
    assert calls("rpush") == 0  # a full window of successes is left as it is
    assert calls("pexpire") == 2
