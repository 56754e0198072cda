"""Fair shares of a concurrency cap: the spec, its validation and the group of a call.

The hand-back order itself is Redis-side (weighted fair queuing in scripts/park.lua):
tests/contract/test_parking_contract.py and tests/integration/test_parking_fleet.py.
"""

from __future__ import annotations

import pytest
from celery import Celery

from taskguard import Concurrency, ConfigurationError, GuardedTask
from taskguard.celery._runtime import runtime_for


def test_the_group_and_its_weight_come_from_the_call() -> None:
    cap = Concurrency(4, fair="{tenant}", weights={"premium": 3})
    assert cap.fair_group([], {"tenant": "premium"}) == ("premium", 3.0)
    assert cap.fair_group([], {"tenant": "free"}) == ("free", 1.0)
    assert Concurrency(4).fair_group([], {"tenant": "x"}) is None
    by_callable = Concurrency(4, fair=lambda order: order["tenant"])
    assert by_callable.fair_group([{"tenant": "t1"}], {}) == ("t1", 1.0)


def test_fair_and_weights_show_in_repr_and_survive_replace() -> None:
    cap = Concurrency(4, fair="{tenant}", weights={"premium": 3})
    assert repr(cap) == "Concurrency(4, fair='{tenant}', weights={'premium': 3.0})"
    assert cap.replace(limit=5) == Concurrency(5, fair="{tenant}", weights={"premium": 3})


@pytest.mark.parametrize(
    ("options", "field", "message"),
    [
        ({"weights": {"a": 2}}, "weights", "weights need a fair key"),
        ({"fair": "{t}", "weights": {"a": 0}}, "weights.a", "between 0.001 and 1000000"),
        ({"fair": "{t}", "weights": {"a": "2"}}, "weights.a", "finite number"),
        ({"fair": "{t}", "weights": [("a", 2)]}, "weights", "mapping of group to weight"),
        ({"fair": 3}, "key", "template string or a callable"),
    ],
)
def test_bad_fair_options_name_the_field(options: dict, field: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Concurrency(2, **options)
    assert caught.value.field == field
    assert message in str(caught.value)


def test_a_fair_template_naming_a_missing_argument_fails_at_worker_start() -> None:
    app = Celery("fair-unit", broker="memory://", set_as_current=False)
    app.conf.taskguard = {"redis_url": "memory://"}

    @app.task(base=GuardedTask, guards=[Concurrency(2, fair="{tenant}")], shared=False)
    def report(customer: str) -> None: ...

    with pytest.raises(ConfigurationError) as caught:
        runtime_for(app).validate()
    assert caught.value.field == "concurrency.fair"
    assert caught.value.task == report.name
    assert "'tenant'" in str(caught.value)


def test_fair_and_weights_can_be_set_from_settings() -> None:
    app = Celery("fair-settings", broker="memory://", set_as_current=False)

    @app.task(base=GuardedTask, guards=[Concurrency(2)], shared=False)
    def export(tenant: str) -> None: ...

    app.conf.taskguard = {
        "redis_url": "memory://",
        "tasks": {
            export.name: {"concurrency": {"limit": 2, "fair": "{tenant}", "weights": {"gold": 2}}}
        },
    }
    (cap,) = export.taskguard_settings.guards
    assert cap.fair_group([], {"tenant": "gold"}) == ("gold", 2.0)
