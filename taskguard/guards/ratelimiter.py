"""A standalone rate limiter: a :class:`~taskguard.guards.ratelimit.RateLimit` run
against a backend outside of Celery (``try_acquire``, ``acquire``, ``pause``, ``observe``,
or as a decorator)."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from taskguard.backend.ops import RateOp

from .admission import admit
from .base import Decision
from .keying import bucket_tag, key_text
from .pause import Pause, backend_now, observed_pause, pause_seconds, record_pause
from .ratelimit import RateLimit

if TYPE_CHECKING:
    from taskguard.backend.base import Backend
    from taskguard.keys import KeySchema

__all__ = ["RateLimiter", "call_bucket", "limiter_op"]

#: Distinct (bucket, cost, tag) ops a standalone limiter keeps built.
_OP_CACHE_SIZE = 1024

F = TypeVar("F", bound=Callable[..., Any])


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
        self._ops: dict[tuple[str | None, int, str | None], RateOp] = {}

    def __repr__(self) -> str:
        return f"<RateLimiter {self.spec!r} on {self.backend!r}>"

    def try_acquire(
        self, key: str | int | None = None, cost: int = 1, *, tag: str | int | None = None
    ) -> Decision:
        """Take ``cost`` tokens from ``key``'s bucket if they are there, without waiting.

        ``tag``, here and in :meth:`acquire`, :meth:`pause` and :meth:`observe`: for a
        limit placed by ``tag=`` on a Redis Cluster, what its template renders for this
        bucket (tasks place the bucket by it; ignored on one server and Sentinel).

        Raises:
            TypeError: ``key`` or ``tag`` is not a str, an int or None.
            ValueError: The limit places its buckets by tag on a Cluster and ``tag`` is
                missing.
        """
        bucket = None if key is None else key_text(key)
        return self._decide(bucket, cost, reserve_within=0.0, tag=tag)

    def acquire(
        self,
        key: str | int | None = None,
        cost: int = 1,
        timeout: float | None = None,
        *,
        tag: str | int | None = None,
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
        decision = self._decide(key, cost, reserve_within=reserve, tag=tag)
        if decision.allowed:
            return decision
        raise self.spec.refusal(decision.retry_after, key, decision.degraded)

    def pause(
        self,
        key: str | int | None,
        seconds: float | timedelta | str,
        *,
        tag: str | int | None = None,
    ) -> Pause:
        """Refuse every call of ``key``'s bucket for ``seconds``, in every process.

        For the feedback of the service the limit protects: an HTTP 429's
        ``Retry-After``. One call, in server time: the bucket's next call passes
        ``seconds`` from now, or later if its backlog already reached further (a pause
        never shortens it). Calls refused meanwhile get ``retry_after`` up to the end of
        the pause; after it, the bucket resumes at its steady rate.

        Args:
            key: The bucket (``None``: the limiter's one bucket).
            seconds: From 0 to 31 days: a number, a header's text, or a timedelta.
            tag: For a limit placed by ``tag=`` on a Redis Cluster, what its template
                renders for this bucket (see :meth:`try_acquire`).

        Returns:
            What the pause did; ``retry_after`` is how long the bucket now refuses.

        Raises:
            ValueError: ``seconds`` is not a duration from 0 to 31 days; or the limit
                places its buckets by tag on a Cluster and ``tag`` is missing.
            TypeError: ``key`` or ``tag`` is not a str, an int or None.
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
        keys = self.backend.keys
        tag = bucket_tag(self.spec, keys.spread, bucket, tag)
        op = self.spec.pause_op(keys, bucket, pause_seconds(seconds), tag)
        return record_pause(self.backend, op, bucket=bucket, on_outage=self.spec.on_outage)

    def observe(
        self,
        key: str | int | None = None,
        *,
        remaining: int | str,
        reset_at: float | str | datetime | None = None,
        reset_after: float | str | timedelta | None = None,
        pace: bool = False,
        tag: str | int | None = None,
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
        return self.pause(key, seconds, tag=tag)

    def _op(self, key: str | None, cost: int, tag: str | int | None) -> RateOp:
        return limiter_op(self.spec, self.backend.keys, self._ops, (key, cost, tag))

    def _decide(
        self, key: str | None, cost: int, *, reserve_within: float, tag: str | int | None
    ) -> Decision:
        ops = [self._op(key, cost, tag)]
        outcome = admit(self.backend, self._specs, ops, reserve_within=reserve_within)
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
            key, tag = call_bucket(self.spec, args, kwargs, signature)
            self.acquire(key=key, tag=tag)
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def limiter_op(
    spec: RateLimit,
    keys: KeySchema,
    ops: dict[tuple[str | None, int, str | None], RateOp],
    call: tuple[str | None, int, str | int | None],
) -> RateOp:
    """The op of a standalone call ``(bucket, cost, tag)``, kept in ``ops``: ops are
    immutable values, built once per (bucket, cost, tag), not per decision (both the sync
    and the asyncio limiter)."""
    key, cost, given = call
    tag = bucket_tag(spec, keys.spread, key, given)
    per_key = spec.per_key
    if per_key is not None and per_key.values is None:  # a callable: ask it each time
        return spec.op(keys, key, cost, tag)
    op = ops.get((key, cost, tag))
    if op is None:
        if len(ops) >= _OP_CACHE_SIZE:
            ops.clear()
        op = ops[key, cost, tag] = spec.op(keys, key, cost, tag)
    return op


def call_bucket(
    spec: RateLimit, args: Any, kwargs: Any, signature: inspect.Signature
) -> tuple[str | None, str | None]:
    """The bucket and its tag of one call of a decorated function."""
    tag = None if spec.tag.source is None else spec.tag.render(args, kwargs, signature)
    return spec.key.render(args, kwargs, signature), tag
