"""A reused bucket's admission ARGV, kept as bytes, is what redis-py would send."""

from __future__ import annotations

import pytest
from redis.connection import Encoder

from taskguard.backend.ops import RateOp
from taskguard.backend.wire import admit_call, encode

ENCODER = Encoder("utf-8", "strict", decode_responses=False)


@pytest.mark.parametrize("reserve_within", [0.0, 0.25, 2.5])
@pytest.mark.parametrize("overrides", [None, "tg:limits"])
def test_a_cached_encoding_sends_the_same_bytes(
    reserve_within: float, overrides: str | None
) -> None:
    op = RateOp("tg:rl:a", 1 / 3, 7, 2, overrides, "a")
    _, raw = encode([op], release=False)  # ints, floats and str, as built per op
    reserve_us = int(reserve_within * 1_000_000)
    admit_call([op], reserve_within)  # builds and keeps the encoding
    script, keys, again = admit_call([op], reserve_within)  # from what was kept
    assert [ENCODER.encode(a) for a in again] == [ENCODER.encode(a) for a in [reserve_us, *raw]]
    assert again[0] == str(int(reserve_within * 1_000_000)).encode()
    assert all(type(a) is bytes for a in again)  # looked up by the lane, not re-encoded
    assert keys == ["tg:rl:a"] + ([overrides] if overrides else [])
    assert script.sha
