"""CircuitBreaker as a value (validation, outcome classification, repr/replace/eq), its
settings (the ``breakers`` table, per-task ``circuit_breaker``, outage policies), and the
standalone Breaker's call paths on the memory backend."""

import contextlib
from datetime import timedelta
from typing import Any

import pytest

import taskguard
from taskguard import Breaker, CircuitBreaker, CircuitOpen, ConfigurationError, Lock, RateLimit
from taskguard.celery._settings import Settings
from taskguard.clock import FakeClock

from .celery_harness import DEAD_URL


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", ""),
        ("name", 7),
        ("failure_rate", 1.5),
        ("failure_rate", -0.1),
        ("failure_rate", "half"),
        ("failure_rate", True),
        ("slow_call_rate", 2),
        ("slow_call_duration", 0),
        ("slow_call_duration", "1m"),
        ("window", 0),
        ("window", 2.5),
        ("window_type", "sliding"),
        ("minimum_calls", 0),
        ("consecutive_failures", -1),
        ("open_for", -1),
        ("open_for", "30s"),
        ("open_growth", 0.5),
        ("max_open_for", 0),
        ("half_open_probes", 0),
        ("successes_to_close", -2),
        ("probe_ttl", float("inf")),
        ("record_exceptions", [ValueError, "KeyError"]),
        ("record_exceptions", int),
        ("ignore_exceptions", 3),
        ("on_open", "skip"),
        ("on_outage", "maybe"),
    ],
)
def test_each_bad_field_is_a_configuration_error_naming_it(field: str, value: Any) -> None:
    options = {"name": "svc", field: value}
    with pytest.raises(ConfigurationError) as info:
        CircuitBreaker(**options)
    assert info.value.field == field
    assert f"field {field!r}" in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("successes_to_close", 0), ("failure_rate", float("nan")), ("slow_call_rate", float("nan"))],
)
def test_values_that_are_accepted_but_should_not_be(field: str, value: Any) -> None:
    with pytest.raises(ConfigurationError):
        CircuitBreaker("svc", **{field: value})


def test_defaults_and_derived_values() -> None:
    cb = CircuitBreaker("svc")
    # lib/breaker.lua's arguments, in its order: times in ms, "never" as a rate above 1.
    assert cb.params() == ("count", 20, 10, 0.5, 2.0, 0, 30_000, 1.0, 600_000, 1, 1, 60_000)
    assert (cb.slow_call_rate, cb.slow_call_duration, cb.on_open, cb.on_outage) == (
        None,
        60.0,
        "defer",
        "allow",
    )
    assert CircuitBreaker("svc", window=4).minimum_calls == 4  # never more than the window
    assert CircuitBreaker("svc", half_open_probes=3).successes_to_close == 3
    assert CircuitBreaker("svc", open_for=timedelta(minutes=2)).open_for == 120.0


def test_open_for_longer_than_the_default_cap_is_kept() -> None:
    clock = FakeClock()
    b = taskguard.connect(taskguard.MemoryBackend(clock=clock)).circuit_breaker(
        "svc", consecutive_failures=1, open_for=900
    )
    with pytest.raises(ValueError, match="invalid literal"):
        b.call(int, "x")
    assert b.try_acquire().retry_after == pytest.approx(900)


def test_minimum_calls_above_the_count_window_still_trips() -> None:
    b = taskguard.connect("memory://").circuit_breaker("svc", window=5, minimum_calls=8)
    for _ in range(20):
        with contextlib.suppress(ValueError, CircuitOpen):
            b.call(int, "x")
    assert b.state == "open"


class Transient(Exception):
    pass


@pytest.mark.parametrize(
    ("options", "exc", "duration", "code"),
    [
        ({}, None, 0.1, "s"),
        ({"slow_call_duration": 2}, None, 2.0, "S"),  # the threshold itself is slow
        ({"slow_call_duration": 2}, None, 1.99, "s"),
        ({}, ValueError(), 0.1, "f"),
        ({"slow_call_duration": 2}, ValueError(), 3, "F"),
        ({}, KeyboardInterrupt(), 0.1, "s"),  # not an Exception: not recorded
        ({"record_exceptions": (Transient,)}, ValueError(), 0.1, "s"),
        ({"record_exceptions": Transient}, Transient(), 0.1, "f"),
        ({"ignore_exceptions": (LookupError,)}, KeyError(), 0.1, "i"),
        ({"ignore_exceptions": (Exception,)}, ValueError(), 99, "i"),  # ignore wins
        ({"record_exceptions": lambda e: "503" in str(e)}, OSError("503"), 0.1, "f"),
        ({"record_exceptions": lambda e: "503" in str(e)}, OSError("404"), 0.1, "s"),
        ({"ignore_exceptions": lambda e: isinstance(e, OSError)}, OSError(), 0.1, "i"),
    ],
)
def test_outcome_classification(
    options: dict[str, Any], exc: BaseException | None, duration: float, code: str
) -> None:
    assert CircuitBreaker("svc", **options).outcome(exc, duration) == code


def test_repr_replace_eq_hash() -> None:
    cb = CircuitBreaker("svc", failure_rate=0.25, open_for=timedelta(seconds=5))
    assert repr(cb) == "CircuitBreaker('svc', failure_rate=0.25, open_for=5.0)"
    assert repr(CircuitBreaker("svc")) == "CircuitBreaker('svc')"
    assert cb == CircuitBreaker("svc", failure_rate=0.25, open_for=5)
    assert hash(cb) == hash(CircuitBreaker("svc", failure_rate=0.25, open_for=5))
    assert cb != CircuitBreaker("svc")
    assert cb != CircuitBreaker("other", failure_rate=0.25, open_for=5)
    assert cb != RateLimit("1/s")
    other = cb.replace(name="other", window=5)
    assert (other.name, other.window, other.failure_rate, other.minimum_calls) == (
        "other",
        5,
        0.25,
        5,  # replace() derives the default again: at most the (new) window
    )
    with pytest.raises(ConfigurationError) as info:
        cb.replace(window_type="sliding")
    assert info.value.field == "window_type"
    with pytest.raises(AttributeError, match="immutable"):
        cb.window = 3  # type: ignore[misc]


# ---------------------------------------------------------------- settings


def guards_of(config: dict[str, Any], *class_guards: Any, task: str = "proj.sync") -> Any:
    return Settings.from_mapping(config).for_task(task, class_guards).guards


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ([], "breakers"),
        ({"partner": 3}, "breakers.partner"),
        ({"partner": {"failure_rate": 2}}, "breakers.partner.failure_rate"),
        ({"partner": {"window_type": "x"}}, "breakers.partner.window_type"),
        ({"partner": {"colour": "red"}}, "breakers.partner"),
    ],
)
def test_breakers_table_is_validated(table: Any, field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_mapping({"breakers": table})
    assert info.value.field == field


def test_a_class_level_breaker_takes_the_tables_options_by_name() -> None:
    table = {"partner": {"consecutive_failures": 3, "open_for": 10}}
    [cb] = guards_of({"breakers": table}, CircuitBreaker("partner"))
    assert cb == CircuitBreaker("partner", consecutive_failures=3, open_for=10)
    [other] = guards_of({"breakers": table}, CircuitBreaker("billing", window=5))
    assert other == CircuitBreaker("billing", window=5)


def test_per_task_circuit_breaker_name_mapping_or_null() -> None:
    table = {"partner": {"consecutive_failures": 3}}
    by_name = {"breakers": table, "tasks": {"proj.*": {"circuit_breaker": "partner"}}}
    assert guards_of(by_name) == (CircuitBreaker("partner", consecutive_failures=3),)
    unknown = {"tasks": {"proj.*": {"circuit_breaker": "geo"}}}
    assert guards_of(unknown, CircuitBreaker("old")) == (CircuitBreaker("geo"),)
    mapping = {"tasks": {"proj.*": {"circuit_breaker": {"name": "geo", "window": 5}}}}
    assert guards_of(mapping) == (CircuitBreaker("geo", window=5),)
    removed = {"tasks": {"proj.*": {"circuit_breaker": None}}}
    assert guards_of(removed, CircuitBreaker("old"), Lock()) == (Lock().bind("proj.sync", None),)


def test_the_breaker_is_admitted_before_every_other_guard() -> None:
    guards = guards_of({}, RateLimit("1/s"), Lock(), CircuitBreaker("svc"))
    assert [g.kind for g in guards] == ["circuit_breaker", "lock", "rate_limit"]


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"circuit_breaker": 3}, "circuit_breaker"),
        ({"circuit_breaker": {"window": 5}}, "circuit_breaker"),
        ({"circuit_breaker": {"name": "geo", "window": 0}}, "circuit_breaker.window"),
        ({"circuit_breaker": {"name": "geo", "colour": 1}}, "circuit_breaker"),
        ({"on_outage": {"circuit_breaker": "never"}}, "on_outage.circuit_breaker"),
    ],
)
def test_invalid_per_task_circuit_breaker_names_task_and_field(
    entry: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_mapping({"tasks": {"proj.sync": entry}})
    assert (info.value.task, info.value.field) == ("proj.sync", field)


def test_outage_policy_for_the_circuit_breaker_kind() -> None:
    cb = CircuitBreaker("svc")
    assert guards_of({}, cb)[0].on_outage == "allow"  # the default
    assert guards_of({"on_outage": {"circuit_breaker": "deny"}}, cb)[0].on_outage == "deny"
    per_task = {"tasks": {"proj.*": {"on_outage": {"circuit_breaker": "local"}}}}
    assert guards_of(per_task, cb)[0].on_outage == "local"
    named = {
        "on_outage": {"circuit_breaker": "deny"},
        "tasks": {"proj.*": {"circuit_breaker": "geo"}},
    }
    assert guards_of(named)[0].on_outage == "deny"


# ---------------------------------------------------------------- standalone Breaker


def test_call_decorator_and_context_manager() -> None:
    b = taskguard.connect("memory://").circuit_breaker("svc", consecutive_failures=2)
    assert "svc" in repr(b)

    @b
    def parse(text: str) -> int:
        return int(text)

    assert parse("7") == 7
    with pytest.raises(ValueError, match="invalid literal"):
        parse("x")
    with b.try_acquire() as decision:  # leaving the block records a success
        assert decision.allowed
    with pytest.raises(ValueError, match="invalid literal"):
        parse("y")
    assert b.state == "closed"  # the success between them reset the count
    with pytest.raises(ValueError, match="invalid literal"):
        parse("z")
    assert b.is_open()
    with pytest.raises(CircuitOpen) as info:
        parse("8")
    assert (info.value.key, info.value.retry_after) == ("svc", pytest.approx(30, abs=1))


def test_recording_twice_counts_once() -> None:
    b = taskguard.connect("memory://").circuit_breaker("svc", consecutive_failures=2)
    call = b.try_acquire().lease
    call.record(ValueError())  # type: ignore[union-attr]
    call.record(ValueError())  # type: ignore[union-attr]
    assert b.state == "closed"


def test_a_slow_probe_closes_when_slow_calls_are_not_tracked() -> None:
    clock = FakeClock()
    b = taskguard.connect(taskguard.MemoryBackend(clock=clock)).circuit_breaker(
        "svc", consecutive_failures=1, open_for=10, slow_call_duration=1
    )
    b.try_acquire().lease.record(ValueError())  # type: ignore[union-attr]
    clock.advance(11)
    b.try_acquire().lease.record(None, duration=5)  # type: ignore[union-attr]
    assert b.state == "closed"


def test_local_outage_policy_trips_the_process_local_breaker() -> None:
    backend = taskguard.connect(DEAD_URL).backend
    b = taskguard.connect(backend).circuit_breaker("svc", consecutive_failures=1, on_outage="local")
    try:
        with pytest.raises(ValueError, match="invalid literal"):
            b.call(int, "x")  # admitted by the local breaker while Redis is down
        with pytest.raises(CircuitOpen):
            b.call(int, "1")
    finally:
        backend.close()


def test_a_with_block_that_raises_records_the_exception() -> None:
    b = taskguard.connect("memory://").circuit_breaker("svc", consecutive_failures=1)
    with pytest.raises(ConnectionError), b.try_acquire():
        raise ConnectionError("refused")
    assert b.state == "open"


def test_memory_backend_gets_the_exact_breaker_and_interval_is_checked() -> None:
    backend = taskguard.connect("memory://").backend
    breaker = taskguard.connect(backend).circuit_breaker("svc", hot_path=True)
    assert type(breaker) is Breaker
    for bad_interval in (0, 2.0, True, "fast"):
        with pytest.raises(ConfigurationError) as info:
            taskguard.connect(backend).circuit_breaker(
                "svc", hot_path=True, flush_interval=bad_interval
            )
        assert info.value.field == "flush_interval"
