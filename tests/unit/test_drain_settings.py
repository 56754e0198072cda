"""The ``drain`` settings section: defaults, and errors naming ``drain.<field>``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from taskguard.celery._settings import Settings
from taskguard.drain import DrainSettings
from taskguard.errors import ConfigurationError


def test_defaults_leave_the_drain_off() -> None:
    assert Settings.from_mapping({}).drain == DrainSettings()
    assert DrainSettings().enabled is False


def test_a_full_section_is_read() -> None:
    drain = Settings.from_mapping(
        {
            "drain": {
                "enabled": True,
                "store": "sqlite:///x.db",
                "table": "kv",
                "namespaces": ["users", "carts"],
                "workers": 4,
                "batch_size": 200,
                "linger": timedelta(milliseconds=20),
                "lease_ttl": 6,
                "max_deliveries": 3,
                "claim_idle": 10,
                "backoff_base": 0.5,
                "backoff_max": 60,
                "stop_timeout": 5,
            }
        }
    ).drain
    assert drain.namespaces == ("users", "carts")
    assert drain.linger == pytest.approx(0.02)
    assert (drain.workers, drain.batch_size, drain.max_deliveries) == (4, 200, 3)
    assert drain.table == "kv"


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"workers": 0}, "drain.workers"),
        ({"batch_size": "big"}, "drain.batch_size"),
        ({"max_deliveries": True}, "drain.max_deliveries"),
        ({"linger": -1}, "drain.linger"),
        ({"lease_ttl": 0}, "drain.lease_ttl"),
        ({"claim_idle": float("nan")}, "drain.claim_idle"),
        ({"enabled": "yes"}, "drain.enabled"),
        ({"enabled": True}, "drain.store"),
        ({"store": "not a url"}, "drain.store"),
        ({"namespaces": [1]}, "drain.namespaces"),
        ({"table": ""}, "drain.table"),
        ({"backoff_base": 5, "backoff_max": 1}, "drain.backoff_max"),
        ({"linger": 5, "lease_ttl": 10}, "drain.linger"),
        ({"wokers": 2}, "drain.wokers"),
    ],
)
def test_invalid_values_name_the_field(section: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_mapping({"drain": section})
    assert info.value.field == field
    assert field in str(info.value)


def test_the_section_must_be_a_mapping() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_mapping({"drain": True})
    assert info.value.field == "drain"


def test_a_single_namespace_string_is_accepted() -> None:
    assert DrainSettings.from_mapping({"namespaces": "users"}).namespaces == ("users",)
