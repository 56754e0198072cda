"""Rate limits that hold across every process: GCRA in one Lua call, time from Redis."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from taskguard._validate import count
from taskguard._validate import name as check_name
from taskguard._validate import rate as check_rate
from taskguard.backend.ops import Op, PauseOp, RateOp
from taskguard.errors import ConfigurationError, RateLimited
from taskguard.keys import KeySchema
from taskguard.units import MAX_BUCKET_SPAN, Rate

from .admission import admit
from .base import Decision, Guard, check_outage_policy
from .keying import KeyFunc, KeySource, key_text, tag_func
from .pause import Pause, backend_now, observed_pause, pause_seconds, record_pause
from .perkey import PerKey

if TYPE_CHECKING:
    from taskguard.backend.base import Backend

__all__ = ["RateLimit", "RateLimiter"]

#: Distinct (bucket, cost) ops a standalone limiter keeps built.
_OP_CACHE_SIZE = 1024

F = TypeVar("F", bound=Callable[..., Any])


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


class RateLimiter:
    """Runs a :class:`RateLimit` against a backend, outside of Celery.

    Build one with ``taskguard.connect(url).rate_limiter(name, rate, burst=...)``.

    Example:
        >>> import taskguard
        >>> limiter = taskguard.connect("memory://").rate_limiter("sms", "2/s", burst=2)
        >>> [limiter.try_acquire(key="+4411").allowed for _ in range(3)]
        [True, True, False]
    """

    def __init__(self, backend: Backend, spec: RateLimit) -> None:
        self.backend = backend
        self.spec = spec
        self._specs = (spec,)
        self._ops: dict[tuple[str | None, int], RateOp] = {}

    def __repr__(self) -> str:
        return f"<RateLimiter {self.spec!r} on {self.backend!r}>"

    def try_acquire(self, key: str | int | None = None, cost: int = 1) -> Decision:
        """Take ``cost`` tokens from ``key``'s bucket if they are there, without waiting.

        Raises:
            TypeError: ``key`` is not a str, an int or None.
        """
        return self._decide(None if key is None else key_text(key), cost, reserve_within=0.0)

    def acquire(
        self, key: str | int | None = None, cost: int = 1, timeout: float | None = None
    ) -> Decision:
        """Take ``cost`` tokens, waiting up to ``timeout`` seconds (``None``: as long as needed).

        The wait is not a polling loop: when tokens are short, the limiter reserves the
        exact future slot in the same call and sleeps until it.

        Raises:
            RateLimited: The tokens would not be there within ``timeout``.
            BackendUnavailable: The backend is down and the policy is ``deny``.
            TypeError: ``key`` is not a str, an int or None.
        """
        key = None if key is None else key_text(key)
        reserve = 1e9 if timeout is None else max(timeout, 0.0)
        decision = self._decide(key, cost, reserve_within=reserve)
        if decision.allowed:
            return decision
        raise self.spec.refusal(decision.retry_after, key, decision.degraded)

    def pause(self, key: str | int | None, seconds: float | timedelta | str) -> Pause:
        """Refuse every call of ``key``'s bucket for ``seconds``, in every process.

        For the feedback of the service the limit protects: an HTTP 429's
        ``Retry-After``. One call, in server time: the bucket's next call passes
        ``seconds`` from now, or later if its backlog already reached further (a pause
        never shortens it). Calls refused meanwhile get ``retry_after`` up to the end of
        the pause; after it, the bucket resumes at its steady rate.

        Args:
            key: The bucket (``None``: the limiter's one bucket).
            seconds: From 0 to 31 days: a number, a header's text, or a timedelta.

        Returns:
            What the pause did; ``retry_after`` is how long the bucket now refuses.

        Raises:
            ValueError: ``seconds`` is not a duration from 0 to 31 days.
            TypeError: ``key`` is not a str, an int or None.
            BackendError: Redis refused for a reason that is not an outage (an outage
                is logged and reported as ``degraded``).

        Example:
            >>> import taskguard
            >>> limiter = taskguard.connect("memory://").rate_limiter("partner", "10/s")
            >>> limiter.pause("acme", 30).retry_after
            30.0
            >>> round(limiter.try_acquire(key="acme").retry_after)
            30
        """
        bucket = None if key is None else key_text(key)
        op = self.spec.pause_op(self.backend.keys, bucket, pause_seconds(seconds))
        return record_pause(self.backend, op, bucket=bucket, on_outage=self.spec.on_outage)

    def observe(
        self,
        key: str | int | None = None,
        *,
        remaining: int | str,
        reset_at: float | str | datetime | None = None,
        reset_after: float | str | timedelta | None = None,
        pace: bool = False,
    ) -> Pause:
        """Follow the service's rate-limit headers for ``key``'s bucket.

        With ``remaining`` 0 the bucket pauses until the reset. With calls remaining it
        is left alone, unless ``pace``: then the next call waits
        ``(reset - now) / remaining``, so that, observing every response, the calls left
        spread evenly until the reset. Header text is accepted as it comes (``"0"``).

        Args:
            key: The bucket (``None``: the limiter's one bucket).
            remaining: Calls left in the service's window (``X-RateLimit-Remaining``).
            reset_at: When the window resets: epoch seconds (``X-RateLimit-Reset``) or an
                aware datetime; turned into a wait with this host's clock.
            reset_after: The same as seconds from now (``RateLimit-Reset``). One of the
                two is needed when ``remaining`` is 0 or ``pace`` is set.
            pace: Spread the calls remaining until the reset.

        Raises:
            ValueError: An argument is out of range; the message names it.

        Example:
            >>> import taskguard
            >>> limiter = taskguard.connect("memory://").rate_limiter("partner", "10/s")
            >>> limiter.observe("acme", remaining=5, reset_after=60).retry_after
            0.0
            >>> limiter.observe("acme", remaining=0, reset_after=60).retry_after
            60.0
        """
        seconds = observed_pause(
            remaining=remaining,
            reset_at=reset_at,
            reset_after=reset_after,
            pace=pace,
            now=backend_now(self.backend),
        )
        if not seconds:
            return Pause(None if key is None else key_text(key))
        return self.pause(key, seconds)

    def _op(self, key: str | None, cost: int) -> RateOp:
        # Ops are immutable values: build each (bucket, cost) once, not per decision.
        per_key = self.spec.per_key
        if per_key is not None and per_key.values is None:  # a callable: ask it each time
            return self.spec.op(self.backend.keys, key, cost)
        op = self._ops.get((key, cost))
        if op is None:
            if len(self._ops) >= _OP_CACHE_SIZE:
                self._ops.clear()
            op = self._ops[key, cost] = self.spec.op(self.backend.keys, key, cost)
        return op

    def _decide(self, key: str | None, cost: int, *, reserve_within: float) -> Decision:
        outcome = admit(
            self.backend, self._specs, [self._op(key, cost)], reserve_within=reserve_within
        )
        result = outcome.admission
        if result.reserved:
            clock = getattr(self.backend, "clock", None)
            (clock.sleep if clock is not None else _sleep)(result.retry_after)
            return Decision(True, remaining=0, key=key, degraded=outcome.degraded)
        return Decision(
            result.allowed,
            retry_after=result.retry_after,
            remaining=result.remaining,
            key=key,
            degraded=outcome.degraded,
        )

    def __enter__(self) -> Decision:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        return None

    def __call__(self, func: F) -> F:
        """Use as a decorator: each call waits for a token; the key comes from the spec."""
        signature = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.acquire(key=self.spec.key.render(args, kwargs, signature))
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


def _sleep(seconds: float) -> None:
    time.sleep(seconds)
