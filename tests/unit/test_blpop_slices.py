"""The BLPOP slices of a wait stay clear of the client's read timeout."""

from __future__ import annotations

import pytest
import redis

from taskguard.backend.redis import RedisBackend
from taskguard.backend.wire import blpop_slice, blpop_timeout


@pytest.mark.parametrize(
    ("socket_timeout", "expected"),
    [
        (0.5, 0.3),  # taskguard's default: 0.2 s clear of it (Redis's hz tick, the reply)
        (2.0, 1.6),  # long timeouts: 80 % of them
        (0.1, 0.05),  # very short ones: the floor
    ],
)
def test_a_slice_leaves_room_for_redis_to_notice_the_timeout(
    socket_timeout: float, expected: float
) -> None:
    assert blpop_slice(socket_timeout) == pytest.approx(expected)


def test_a_wait_never_asks_redis_to_block_forever() -> None:
    # Redis 6.2 reads a timeout under 1 ms as 0: "block forever".
    assert blpop_timeout(0.0001, blpop_slice(0.5)) >= 0.01
    assert blpop_timeout(10.0, blpop_slice(0.5)) == pytest.approx(0.3)


@pytest.mark.parametrize(("given", "expected"), [(0.3, 0.1), (2.0, 1.6), (None, 0.3)])
def test_a_given_client_is_waited_on_by_its_own_read_timeout(
    given: float | None, expected: float
) -> None:
    # The backend's own option (0.5 s) is not the given client's: a slice sized for it
    # could outlast a shorter read timeout and look like an outage.
    client = redis.Redis(socket_timeout=given)
    backend = RedisBackend("redis://127.0.0.1:1/0", client=client)
    assert backend._slice() == pytest.approx(expected)
    assert RedisBackend("redis://127.0.0.1:1/0", socket_timeout=2.0)._slice() == pytest.approx(1.6)
