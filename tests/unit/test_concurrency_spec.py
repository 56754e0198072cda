"""The Concurrency spec and the ``concurrency`` setting: validation names task and field."""

import inspect
from typing import Any

import pytest

import taskguard
from taskguard import Concurrency, ConcurrencyControl
from taskguard.celery._settings import Settings
from taskguard.errors import ConfigurationError


@pytest.mark.parametrize(
    ("args", "kwargs", "field"),
    [
        ((0,), {}, "limit"),
        ((-1,), {}, "limit"),
        ((True,), {}, "limit"),
        (("2",), {}, "limit"),
        ((2,), {"wait": -1}, "wait"),
        ((2,), {"ttl": 0}, "ttl"),
        ((2,), {"retry_delay": 0}, "retry_delay"),
        ((2,), {"name": ""}, "name"),
        ((2,), {"on_outage": "maybe"}, "on_outage"),
    ],
)
def test_spec_validation(args: tuple[Any, ...], kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Concurrency(*args, **kwargs)
    assert info.value.field == field


def test_control_and_semaphore_validate() -> None:
    backend = taskguard.connect("memory://").backend
    for make, field in [
        (lambda: ConcurrencyControl(0), "limit"),
        (lambda: ConcurrencyControl(2, queue_timeout=-1), "queue_timeout"),
        (lambda: taskguard.connect(backend).semaphore("x", limit=0), "limit"),
        (lambda: taskguard.connect(backend).semaphore("x", limit=1, ttl=0), "ttl"),
    ]:
        with pytest.raises(ConfigurationError) as info:
            make()
        assert info.value.field == field


def test_spec_defaults_repr_and_equality() -> None:
    spec = Concurrency(3)
    assert (spec.wait, spec.retry_delay, spec.ttl, spec.on_outage) == (0.0, 1.0, 60.0, "deny")
    assert (
        repr(Concurrency(3, key="{tenant}", wait=2)) == "Concurrency(3, key='{tenant}', wait=2.0)"
    )
    assert Concurrency(3, wait=2) == Concurrency(3, wait=2.0)
    assert Concurrency(3) != Concurrency(4)
    assert len({Concurrency(3), Concurrency(3)}) == 1
    assert spec.conflict_delay(30) == 1.0
    assert spec.conflict_delay(0.2) == 0.2


def report(tenant: str, day: str = "") -> None: ...


def resolve(entry: Any, class_guards: tuple[Any, ...] = (), **global_: Any) -> Any:
    settings = Settings.from_mapping({**global_, "tasks": {"t": entry}})
    return settings.for_task("t", class_guards, inspect.signature(report)).guards


def test_settings_bare_limit_and_mapping() -> None:
    [bare] = resolve({"concurrency": 3})
    assert bare == Concurrency(3, name="t")
    [mapped] = resolve({"concurrency": {"limit": 2, "key": "{tenant}", "wait": 5}})
    assert (mapped.limit, mapped.wait, mapped.name) == (2, 5.0, "t")
    assert mapped.bucket(("acme",), {}) == "acme"
    [replaced] = resolve({"concurrency": 4}, (Concurrency(9, ttl=5),))
    assert (replaced.limit, replaced.ttl) == (4, 60.0)  # replaced whole, not merged


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"limit": 2, "bogus": 1}, "concurrency.bogus"),
        ({"limit": 0}, "concurrency.limit"),
        ("2", "concurrency.limit"),
        ({"limit": 2, "ttl": -1}, "concurrency.ttl"),
        ({"key": "{tenant}"}, "concurrency"),  # no limit
    ],
)
def test_settings_errors_name_task_and_field(value: Any, field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        resolve({"concurrency": value})
    assert (info.value.task, info.value.field) == ("t", field)


def test_settings_key_naming_a_missing_argument() -> None:
    with pytest.raises(ConfigurationError) as info:
        resolve({"concurrency": {"limit": 2, "key": "{customer_id}"}})
    assert info.value.task == "t"
    assert info.value.field == "concurrency.key"
    assert "customer_id" in str(info.value)


def test_settings_null_removes_and_outage_applies() -> None:
    class_guards = (Concurrency(2),)
    assert resolve({"concurrency": None}, class_guards) == ()
    [kept] = resolve({}, class_guards, on_outage={"concurrency": "allow"})
    assert kept.on_outage == "allow"
    [built] = resolve({"concurrency": 3}, on_outage={"concurrency": "local"})
    assert built.on_outage == "local"
    [own] = resolve({"concurrency": {"limit": 3, "on_outage": "allow"}}, on_outage="local")
    assert own.on_outage == "allow"  # the guard's own setting wins over the global one
