"""Rate limits that hold across every process: GCRA in one Lua call, time from Redis.

The guard (:class:`RateLimit`) is here; a standalone limiter running one, outside of
Celery, is :class:`~taskguard.guards.ratelimiter.RateLimiter`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from taskguard._validate import count
from taskguard._validate import name as check_name
from taskguard._validate import rate as check_rate
from taskguard.backend.ops import Op, PauseOp, RateOp
from taskguard.errors import ConfigurationError, RateLimited
from taskguard.keys import KeySchema
from taskguard.units import MAX_BUCKET_SPAN, Rate

from .base import Guard, check_outage_policy
from .keying import KeyFunc, KeySource, tag_func
from .perkey import PerKey

__all__ = ["RateLimit"]


class RateLimit(Guard):
    """At most ``rate`` calls per key, across every worker (GCRA).

    Args:
        rate: ``"10/s"``, ``"100/m"``, ``"5000/h"``, ``"1000/d"`` (or ``"30/5m"``).
        key: One bucket per value of this template over the task's arguments
            (``"{customer_id}"``), or a callable returning the bucket; ``None`` shares
            one bucket across all calls.
        burst: Calls an idle bucket admits back to back (default 1: evenly spaced).
        cost: Tokens one call takes: an int, or a callable over the task's arguments.
        name: The limiter's name; tasks using one name share its buckets. Defaults to
            the task name.
        on_outage: ``"allow"`` (default), ``"deny"`` or ``"local"`` while Redis is down.
        per_key: Rates for some buckets: a mapping of rendered key to rate
            (``{"acme": "100/s"}``) or a callable taking the key and returning a rate or
            ``None`` (this limit's own ``rate``).
        tag: On a Redis Cluster, the source of this guard's hash tag instead of its key:
            a template or callable like ``key`` (``"{customer_id}"``), so guards keyed
            differently share a slot and a task's admission stays one call. It must be
            a function of the key. Ignored on one server and on Sentinel.

    Example:
        >>> RateLimit("100/m", key="{customer_id}", burst=10)
        RateLimit('100/m', key='{customer_id}', burst=10)
    """

    kind = "rate_limit"
    admission_rank = 30
    _positional = ("rate",)
    rate: Rate
    key: KeyFunc
    burst: int
    cost: int | Callable[..., int]
    name: str | None
    on_outage: str
    per_key: PerKey[Rate] | None
    tag: KeyFunc
    _signature: inspect.Signature | None

    def __init__(
        self,
        rate: str | Rate,
        *,
        key: KeySource = None,
        burst: int | None = None,
        cost: int | Callable[..., int] = 1,
        name: str | None = None,
        on_outage: str = "allow",
        per_key: Mapping[str, str | Rate] | Callable[[str | None], Any] | None = None,
        tag: KeySource = None,
    ) -> None:
        parsed = check_rate(rate, "rate_limit")
        burst = 1 if burst is None else count(burst, "burst")
        if burst * parsed.interval > MAX_BUCKET_SPAN:
            raise ConfigurationError(
                f"burst {burst} at '{parsed}' takes {burst * parsed.interval / 31_536_000:.0f} "
                "years to refill: at most 100 years (burst x seconds per call)",
                field="burst",
            )
        if not callable(cost):
            cost = count(cost, "cost")
            if cost > burst:
                raise ConfigurationError(
                    f"cost {cost} exceeds burst {burst}: such a call could never pass",
                    field="cost",
                )
        self._set(
            rate=parsed,
            key=KeyFunc(key),
            burst=burst,
            cost=cost,
            name=None if name is None else check_name(name, "name"),
            on_outage=check_outage_policy(on_outage),
            per_key=None if per_key is None else PerKey(per_key, check_rate, "per_key"),
            tag=tag_func(tag, KeyFunc(key)),
            _signature=None,
        )

    def _fields(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "key": self.key.source,
            "burst": self.burst,
            "cost": self.cost,
            "name": self.name,
            "on_outage": self.on_outage,
            "per_key": None if self.per_key is None else self.per_key.source,
            "tag": self.tag.source,
        }

    def __repr__(self) -> str:
        parts = [repr(str(self.rate))]
        if self.key.source is not None:
            parts.append(f"key={self.key.source!r}")
        if self.burst != 1:
            parts.append(f"burst={self.burst}")
        if self.cost != 1:
            parts.append(f"cost={self.cost!r}")
        if self.name:
            parts.append(f"name={self.name!r}")
        if self.on_outage != "allow":
            parts.append(f"on_outage={self.on_outage!r}")
        if self.per_key is not None:
            parts.append(f"per_key={self.per_key!r}")
        if self.tag.source is not None:
            parts.append(f"tag={self.tag.source!r}")
        return f"RateLimit({', '.join(parts)})"

    def bucket(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
        """The bucket key for one call."""
        return self.key.render(args, kwargs, self._signature)

    def op(
        self, keys: KeySchema, bucket: str | None = None, cost: int = 1, tag: str | None = None
    ) -> RateOp:
        """The op taking ``cost`` tokens from ``bucket`` (None: the limiter's one bucket);
        ``tag``: the hash-tag source on a spread schema (see :meth:`tag_for`)."""
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
            raise ValueError(f"cost must be a positive integer, got {cost!r} for {self!r}")
        if cost > self.burst:
            raise ValueError(f"cost {cost} exceeds burst {self.burst} of {self!r}")
        name = self.name or "default"
        rate = self.rate if self.per_key is None else self.per_key.get(bucket, self.rate)
        return RateOp(
            key=keys.rate_limit(name, bucket, tag=tag),
            interval=rate.interval,
            burst=self.burst,
            cost=cost,
            overrides=keys.limit_overrides(name),
            field="*" if bucket is None else f"k:{bucket}",
        )

    @property
    def tolerance(self) -> float:
        """Seconds a bucket's TAT may run ahead of now while a call still passes:
        ``(burst - 1) x interval`` (a pause pushes the TAT this far past its end)."""
        return (self.burst - 1) * self.rate.interval

    def pause_op(
        self, keys: KeySchema, bucket: str | None, seconds: float, tag: str | None = None
    ) -> PauseOp:
        """The op pausing ``bucket`` (None: the limiter's one bucket) for ``seconds``."""
        return PauseOp(
            key=keys.rate_limit(self.name or "default", bucket, tag=tag),
            seconds=seconds,
            tolerance=self.tolerance,
        )

    def task_ops(
        self, keys: KeySchema, args: Sequence[Any], kwargs: Mapping[str, Any], task_id: str
    ) -> list[Op]:
        if self.key.source is None and not callable(self.cost) and self.per_key is None:
            # One bucket, fixed cost: the same op for every run (built once per schema).
            cached = self.__dict__.get("_static_op")
            if cached is None or cached[0] is not keys:
                cached = (keys, self.op(keys, None, self.cost))
                object.__setattr__(self, "_static_op", cached)
            return [cached[1]]
        cost = self.cost(*args, **kwargs) if callable(self.cost) else self.cost
        return [self.op(keys, self.bucket(args, kwargs), cost, self.tag_for(args, kwargs))]

    def denied_error(self, retry_after: float, key: str | None = None) -> RateLimited:
        return RateLimited(
            f"{self!r} exhausted for key {key!r}; retry after {retry_after:.3f}s",
            guard=repr(self),
            key=key,
            retry_after=retry_after,
        )
