"""taskguard's EVALSHAs replayed through its lane, with no guard Python around them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from taskguard.backend.lane import Lane

__all__ = ["lane_evalsha"]


@dataclass(frozen=True)
class _Loaded:
    """A script the server already has, known by its SHA (what a lane needs of a Script)."""

    sha: str
    source: str = ""


def lane_evalsha(url: str) -> Callable[..., Any]:
    """``evalsha(sha, numkeys, *keys_and_args)`` sent through a taskguard
    :class:`~taskguard.backend.lane.Lane`: the client under every guard call."""
    lane = Lane(redis.Redis.from_url(url))

    def evalsha(sha: str, numkeys: int, *rest: Any) -> Any:
        return lane.evalsha(_Loaded(sha), rest[:numkeys], rest[numkeys:])  # type: ignore[arg-type]

    return evalsha
