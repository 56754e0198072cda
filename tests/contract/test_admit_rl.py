"""admit_rl.lua, the lean script of a lone rate limit, decides as admit.lua does.

Each scenario runs the same op sequence through both scripts on twin buckets (same state,
different keys) of a real Redis and compares the replies and the stored TATs. Replies
carry server times (a wait in microseconds), which move between the two calls, so those
compare within a tolerance far below any interval used here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from taskguard.backend.lua import Script, load_script
from taskguard.backend.ops import RateOp
from taskguard.backend.wire import encode, script_for

GENERAL = load_script("admit", ["ops", "gcra"])
#: Time-dependent values (waits, TATs) of the twin calls may differ by this many µs.
SLACK_US = 200_000


@pytest.fixture
def client(redis_url: str, tg_prefix: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as client:
        yield client
        keys = list(client.scan_iter(match=f"{tg_prefix}:*"))
        if keys:
            client.delete(*keys)


def _call(client: redis.Redis, script: Script, op: RateOp, reserve_us: int) -> list[Any]:
    keys, args = encode([op], release=False)
    return list(script(client, keys, [reserve_us, *args]))


def _twins(client: redis.Redis, prefix: str, steps: list[tuple[dict[str, Any], int]]) -> None:
    lean = script_for("admit", [RateOp(key="x", interval=1.0, burst=1)])
    assert lean.name == "admit_rl"
    for n, (fields, reserve_us) in enumerate(steps):
        ops = {
            name: RateOp(
                key=f"{prefix}:{name}:rl",
                **{**fields, "overrides": fields.get("overrides") and f"{prefix}:{name}:lim"},
            )
            for name in ("general", "lean")
        }
        want = _call(client, GENERAL, ops["general"], reserve_us)
        got = _call(client, lean, ops["lean"], reserve_us)
        assert len(got) == len(want), (n, want, got)
        assert got[0] == want[0], (n, want, got)
        assert got[2:] == want[2:], (n, want, got)
        assert abs(got[1] - want[1]) <= SLACK_US, (n, want, got)
        tats = [client.get(f"{prefix}:{name}:rl") for name in ("general", "lean")]
        assert (tats[0] is None) == (tats[1] is None)
        if tats[0] is not None and tats[1] is not None:
            assert abs(float(tats[0]) - float(tats[1])) <= SLACK_US, (n, tats)
            for name in ("general", "lean"):
                assert client.pttl(f"{prefix}:{name}:rl") > 0


def test_burst_then_denial(client: redis.Redis, tg_prefix: str) -> None:
    step = ({"interval": 3_600.0, "burst": 3}, 0)
    _twins(client, tg_prefix, [step] * 5)


def test_cost_above_one_and_fractional_interval(client: redis.Redis, tg_prefix: str) -> None:
    steps = [({"interval": 1200.333, "burst": 5, "cost": 2}, 0)] * 4
    _twins(client, tg_prefix, steps)


def test_reservation_within_and_beyond(client: redis.Redis, tg_prefix: str) -> None:
    hour = 3_600.0
    steps = [
        ({"interval": hour, "burst": 1}, 0),  # takes the token
        ({"interval": hour, "burst": 1}, 10_000_000),  # wait ~1 h > 10 s: no reservation
        ({"interval": hour, "burst": 1}, 3_000_000_000),  # ~1 h > 50 min: none either
        ({"interval": hour, "burst": 1}, 7_200_000_000),  # within 2 h: reserved
        ({"interval": hour, "burst": 1}, 0),  # now ~2 h away: denied
    ]
    _twins(client, tg_prefix, steps)


def test_limits_set_at_run_time(client: redis.Redis, tg_prefix: str) -> None:
    fields = {"interval": 3_600.0, "burst": 1, "overrides": "x", "field": "k:7"}
    _twins(client, tg_prefix, [(fields, 0)] * 2)  # no entry: applied 0
    for name in ("general", "lean"):
        client.hset(f"{tg_prefix}:{name}:lim", "*", "1000000 4")
    _twins(client, tg_prefix, [(fields, 0)] * 2)  # the "*" entry: applied 1
    for name in ("general", "lean"):
        client.hset(f"{tg_prefix}:{name}:lim", "k:7", "60000000 1")
    _twins(client, tg_prefix, [(fields, 0)] * 3)  # the bucket's own entry wins
