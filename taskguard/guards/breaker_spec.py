"""The circuit breaker's settings: :class:`CircuitBreaker`, a frozen value object.

It validates the settings, turns them into lib/breaker.lua's arguments and classifies a
call's outcome; :class:`~taskguard.guards.breaker.Breaker` runs it outside of Celery.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from taskguard._validate import count as _count
from taskguard._validate import name as _name
from taskguard._validate import number as _number
from taskguard._validate import seconds as _seconds
from taskguard.backend.ops import BreakerOp, Op, new_owner
from taskguard.errors import CircuitOpen, ConfigurationError
from taskguard.keys import KeySchema

from .base import DEFER, Guard, RunContext, Verdict, check_outage_policy
from .breaker_events import OPENED_HALF, announce

__all__ = ["CircuitBreaker", "ExceptionFilter"]

ExceptionFilter = tuple[type[BaseException], ...] | Callable[[BaseException], bool]


def _filter(value: object, field: str) -> ExceptionFilter:
    if callable(value) and not isinstance(value, type):
        return value
    items = value if isinstance(value, (list, tuple)) else (value,)
    if not all(isinstance(t, type) and issubclass(t, BaseException) for t in items):
        raise ConfigurationError(
            f"must be exception types or a predicate, got {value!r}", field=field
        )
    return tuple(items)


def _matches(rule: ExceptionFilter, exc: BaseException) -> bool:
    return rule(exc) if callable(rule) and not isinstance(rule, tuple) else isinstance(exc, rule)


class CircuitBreaker(Guard):
    """A breaker named ``name``; every task and process using the name shares it.

    Args:
        name: The breaker's name (e.g. the downstream service).
        failure_rate: Trip when failures / calls reaches this (0..1) in the window.
        slow_call_rate: Trip when slow calls / calls reaches this (0..1); None: never.
        slow_call_duration: Seconds from which a call counts as slow.
        window: The sliding window: the last N calls, or the last N seconds.
        window_type: ``"count"`` or ``"time"`` (1-second buckets).
        minimum_calls: Calls the window needs before rates can trip it (at most the
            window's size, for a count window).
        consecutive_failures: Also trip after this many failures in a row (0: off); the
            simple mode (the seed's ``threshold``).
        open_for: Seconds to stay open (the seed's ``timeout``).
        open_growth: Multiply ``open_for`` by this on each repeated open (1: fixed).
        max_open_for: Upper bound for the grown ``open_for`` (default: the larger of
            ``open_for`` and 600 s; never below ``open_for``).
        half_open_probes: Probes admitted fleet-wide while half-open.
        successes_to_close: Probe successes that close it (default: all the probes).
        probe_ttl: Probe lease seconds; a crashed probe's permit frees after this.
        record_exceptions: Exception types (or a predicate) that count as failures.
        ignore_exceptions: Exception types (or a predicate) that count for nothing.
        on_open: For tasks: ``"defer"`` until the next probe time, or ``"fail"``.
        on_outage: ``"allow"`` (default), ``"deny"`` or ``"local"`` while Redis is down.
    """

    kind = "circuit_breaker"
    admission_rank = 0
    records_outcome = True
    _positional = ("name",)
    name: str
    failure_rate: float
    slow_call_rate: float | None
    slow_call_duration: float
    window: int
    window_type: str
    minimum_calls: int
    consecutive_failures: int
    open_for: float
    open_growth: float
    max_open_for: float
    half_open_probes: int
    successes_to_close: int
    probe_ttl: float
    record_exceptions: ExceptionFilter
    ignore_exceptions: ExceptionFilter
    on_open: str
    on_outage: str

    def __init__(
        self,
        name: str,
        *,
        failure_rate: float = 0.5,
        slow_call_rate: float | None = None,
        slow_call_duration: float = 60.0,
        window: int = 20,
        window_type: str = "count",
        minimum_calls: int | None = None,
        consecutive_failures: int = 0,
        open_for: float = 30.0,
        open_growth: float = 1.0,
        max_open_for: float | None = None,
        half_open_probes: int = 1,
        successes_to_close: int | None = None,
        probe_ttl: float = 60.0,
        record_exceptions: Any = (Exception,),
        ignore_exceptions: Any = (),
        on_open: str = "defer",
        on_outage: str = "allow",
    ) -> None:
        name = _name(name, "name")
        if window_type not in ("count", "time"):
            raise ConfigurationError(
                f"must be 'count' or 'time', got {window_type!r}", field="window_type"
            )
        if on_open not in ("defer", "fail"):
            raise ConfigurationError(f"must be 'defer' or 'fail', got {on_open!r}", field="on_open")
        probes = _count(half_open_probes, "half_open_probes")
        size = _count(window, "window")
        opened = _seconds(open_for, "open_for")
        longest = (
            max(opened, 600.0) if max_open_for is None else _seconds(max_open_for, "max_open_for")
        )
        if longest < opened:
            raise ConfigurationError(
                f"must not be below open_for ({opened}s), got {max_open_for!r}",
                field="max_open_for",
            )
        calls = _count(
            minimum_calls if minimum_calls is not None else min(size, 10), "minimum_calls"
        )
        if window_type == "count":
            calls = min(calls, size)  # as Resilience4j: a full window is enough calls
        self._set(
            name=name,
            failure_rate=_number(failure_rate, "failure_rate", 0.0, 1.0),
            slow_call_rate=None
            if slow_call_rate is None
            else _number(slow_call_rate, "slow_call_rate", 0.0, 1.0),
            slow_call_duration=_seconds(slow_call_duration, "slow_call_duration"),
            window=size,
            window_type=window_type,
            minimum_calls=calls,
            consecutive_failures=_count(consecutive_failures, "consecutive_failures", 0),
            open_for=opened,
            open_growth=_number(open_growth, "open_growth", 1.0),
            max_open_for=longest,
            half_open_probes=probes,
            successes_to_close=_count(
                probes if successes_to_close is None else successes_to_close,
                "successes_to_close",
            ),
            probe_ttl=_seconds(probe_ttl, "probe_ttl"),
            record_exceptions=_filter(record_exceptions, "record_exceptions"),
            ignore_exceptions=_filter(ignore_exceptions, "ignore_exceptions"),
            on_open=on_open,
            on_outage=check_outage_policy(on_outage),
        )

    _ARGS = (
        "failure_rate",
        "slow_call_rate",
        "slow_call_duration",
        "window",
        "window_type",
        "minimum_calls",
        "consecutive_failures",
        "open_for",
        "open_growth",
        "max_open_for",
        "half_open_probes",
        "successes_to_close",
        "probe_ttl",
        "record_exceptions",
        "ignore_exceptions",
        "on_open",
        "on_outage",
    )

    def _fields(self) -> dict[str, Any]:
        fields = {name: getattr(self, name) for name in ("name", *self._ARGS)}
        # Values derived from others are given back as "default", so that replace()
        # derives them again (replace(window=5) must not keep a minimum_calls of 10).
        derived = {
            "minimum_calls": min(self.window, 10),
            "max_open_for": max(self.open_for, 600.0),
            "successes_to_close": self.half_open_probes,
        }
        for name, value in derived.items():
            if fields[name] == value:
                fields[name] = None
        return fields

    def bind(self, task_name: str, signature: inspect.Signature | None) -> CircuitBreaker:
        return self  # a breaker is named by the user: shared across tasks, not per task

    def params(self) -> tuple[Any, ...]:
        """The settings in lib/breaker.lua's argument order (arguments 3 to 14)."""
        slow_rate = 2.0 if self.slow_call_rate is None else self.slow_call_rate
        return (
            self.window_type,
            self.window,
            self.minimum_calls,
            self.failure_rate,
            slow_rate,
            self.consecutive_failures,
            int(self.open_for * 1000),
            self.open_growth,
            int(self.max_open_for * 1000),
            self.half_open_probes,
            self.successes_to_close,
            int(self.probe_ttl * 1000),
        )

    def call_op(self, keys: KeySchema, owner: str) -> BreakerOp:
        """The op admitting one call through the breaker (``mode`` is set at release)."""
        return BreakerOp(
            keys.breaker(self.name),
            keys.breaker_window(self.name),
            keys.breaker_probes(self.name),
            owner=owner,
            mode="check",
            params=self.params(),
            probe_ttl=self.probe_ttl,
        )

    def task_ops(
        self, keys: KeySchema, args: Sequence[Any], kwargs: Mapping[str, Any], task_id: str
    ) -> list[Op]:
        return [self.call_op(keys, f"{task_id}:{new_owner()}")]

    def outcome(self, exc: BaseException | None, duration: float) -> str:
        """The outcome code of a call that raised ``exc`` (None: returned) in ``duration``."""
        slow = duration >= self.slow_call_duration
        if exc is not None:
            if _matches(self.ignore_exceptions, exc):
                return "i"
            if _matches(self.record_exceptions, exc):
                return "F" if slow else "f"
        return "S" if slow else "s"

    def conflict_delay(self, retry_after: float) -> float:
        return retry_after  # the next probe time: exactly when a task may be admitted

    def on_admitted(self, op: Op, token: int, run: RunContext) -> bool:
        if token == 2:  # this probe moved the breaker from open to half-open
            announce(self.name, *OPENED_HALF, task_id=run.task_id)
        return token > 0  # a half-open probe: its lease is renewed while the run lasts

    def on_denied(self, op: Op, retry_after: float, run: RunContext) -> Verdict:
        return Verdict("fail") if self.on_open == "fail" else DEFER

    def denied_error(self, retry_after: float, key: str | None = None) -> CircuitOpen:
        return CircuitOpen(
            f"circuit {self.name!r} is open; next probe in {retry_after:.1f}s",
            guard=repr(self),
            key=self.name,
            retry_after=retry_after,
        )
