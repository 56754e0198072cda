"""What guards accept from their users, and the errors naming the field for the rest
(issue 11, finding 7): call-time keys, key templates, rates, counts, names, prefixes.

At construction or worker start an invalid value is a ConfigurationError; at call time
(a key passed or computed per call) it is a TypeError. Both name the field.
"""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from click.testing import CliRunner

import taskguard
from taskguard import (
    CircuitBreaker,
    Concurrency,
    ConfigurationError,
    GuardedTask,
    Lock,
    RateLimit,
)
from taskguard.celery import Settings
from taskguard.cli.drain import drain, requeue_dead_letters
from taskguard.guards.quota import Quota, QuotaLimiter
from taskguard.keys import KeySchema

from .celery_harness import run_as_worker

NOT_KEYS = [1.5, (1, 2), ["a"], b"7", True, object()]

# ---------------------------------------------------------------- keys given at call time


def test_a_limiter_takes_str_and_int_keys_as_one_bucket() -> None:
    limiter = taskguard.connect("memory://").rate_limiter("api", "1/h")
    decision = limiter.try_acquire(key=7)
    assert decision.allowed
    assert decision.key == "7"
    assert not limiter.try_acquire(key="7").allowed
    with pytest.raises(taskguard.RateLimited):
        limiter.acquire(key=7, timeout=0)


@pytest.mark.parametrize("bad", NOT_KEYS)
def test_a_limiter_refuses_other_keys_naming_the_field(bad: Any) -> None:
    limiter = taskguard.connect("memory://").rate_limiter("api", "10/s")
    with pytest.raises(TypeError, match=r"^key must be a str or an int, got "):
        limiter.try_acquire(key=bad)
    with pytest.raises(TypeError, match=r"^key must be a str or an int"):
        limiter.acquire(key=bad)
    quota = QuotaLimiter(taskguard.connect("memory://"), Quota("5/day", name="q"))
    with pytest.raises(TypeError, match=r"^key must be a str or an int"):
        quota.try_acquire(key=bad)
    assert quota.try_acquire(key=7).key == "7"


def test_a_key_callable_must_return_str_or_int() -> None:
    client = taskguard.connect("memory://")
    by_pair = client.rate_limiter("pairs", "10/s", key=lambda a, b: (a, b))

    @by_pair
    def call(a: int, b: int) -> int:
        return a + b

    with pytest.raises(TypeError, match=r"^key \(the key callable's result\) must be a str"):
        call(1, 2)
    by_id = client.rate_limiter("ids", "1/h", key=lambda n: n)
    assert by_id(lambda n: n)(7) == 7
    assert not by_id.try_acquire(key="7").allowed  # the int 7 took the bucket "7"


@pytest.mark.parametrize("source", [lambda n: (n, 1), float, lambda n: None])
def test_a_task_lock_key_callable_of_another_type_fails_the_run(app: Celery, source: Any) -> None:
    @app.task(shared=False, base=GuardedTask, guards=[Lock(key=source)])
    def job(n: int) -> int:
        return n

    with pytest.raises(TypeError, match="must be a str or an int"):
        run_as_worker(job, 1)


@pytest.mark.parametrize("bad", [7, (1, 2)])
def test_a_lock_or_semaphore_name_is_checked_when_built(bad: Any) -> None:
    client = taskguard.connect("memory://")
    with pytest.raises(ConfigurationError, match=r"^\[field 'name'\] must be a non-empty"):
        client.lock(bad)
    with pytest.raises(ConfigurationError, match=r"^\[field 'name'\] must be a non-empty"):
        client.semaphore(bad, limit=1)


# ---------------------------------------------------------------- key templates


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{a", "is not a valid template (expected '}' before end of string)"),
        ("a}", "is not a valid template (Single '}' encountered in format string)"),
        ("{a!x}", "has an unknown conversion '!x'"),
    ],
)
def test_a_broken_key_template_names_the_key(template: str, message: str) -> None:
    for build in (
        lambda: RateLimit("1/s", key=template),
        lambda: Lock(key=template),
        lambda: Concurrency(2, key=template),
        lambda: Quota("1/day", key=template),
    ):
        with pytest.raises(ConfigurationError) as info:
            build()
        assert info.value.field == "key"
        assert message in info.value.reason
    assert RateLimit("1/s", key="{{a}}-{a!r}").key.fields == ["a"]


# ---------------------------------------------------------------- rates and counts


@pytest.mark.parametrize("rate", ["10/s\n", "\u0661\u0660/s", "10/s ", " 10/s", "1/99999999999d"])
def test_a_bad_rate_names_the_field(rate: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RateLimit(rate)
    assert info.value.field == "rate_limit"


@pytest.mark.parametrize("limit", ["10/day\n", "\u0661\u0660/day", " 10/day", "10/day "])
def test_a_bad_quota_names_the_field(limit: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Quota(limit)
    assert info.value.field == "limit"
    with pytest.raises(ConfigurationError) as info:
        Quota("10/day", reset="06:00\n")
    assert info.value.field == "reset"
    with pytest.raises(ConfigurationError, match="at most 2"):
        Quota(f"{2**53 + 1}/day")


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: RateLimit("10/s", burst=10**20), "burst"),
        (lambda: RateLimit("10/s", burst=10, cost=10**20), "cost"),
        (lambda: Concurrency(10**20), "limit"),
        (lambda: Quota("5/day", cost=10**20), "cost"),
        (lambda: CircuitBreaker("b", window=10**20), "window"),
    ],
)
def test_counts_beyond_2_to_the_53_are_refused(build: Any, field: str) -> None:
    with pytest.raises(ConfigurationError, match=r"at most 2\*\*53") as info:
        build()
    assert info.value.field == field


def test_a_bucket_refills_within_100_years() -> None:
    assert RateLimit("1/365d", burst=100).burst == 100
    with pytest.raises(ConfigurationError, match="years to refill: at most 100") as info:
        RateLimit("1/365d", burst=101)
    assert info.value.field == "burst"
    assert RateLimit("1000000/s", burst=3_153_600_000_000_000).burst == 3_153_600_000_000_000
    with pytest.raises(ConfigurationError, match="at most 100 years"):
        RateLimit("1000000/s", burst=3_153_600_000_000_001)


# ---------------------------------------------------------------- names and the prefix


@pytest.mark.parametrize(
    "build",
    [
        lambda name: RateLimit("1/s", name=name),
        lambda name: Lock(name=name),
        lambda name: Concurrency(1, name=name),
        lambda name: Quota("1/day", name=name),
        CircuitBreaker,
        lambda name: taskguard.connect("memory://").lock(name),
        lambda name: taskguard.connect("memory://").semaphore(name, limit=1),
        lambda name: taskguard.connect("memory://").rate_limiter(name, "1/s"),
    ],
)
def test_names_are_at_most_200_characters(build: Any) -> None:
    build("n" * 200)
    with pytest.raises(ConfigurationError, match="at most 200 characters, got 201") as info:
        build("n" * 201)
    assert info.value.field == "name"


def test_a_task_name_over_200_characters_is_refused_as_a_guard_name() -> None:
    settings = Settings.from_mapping({})
    name = "proj." + "t" * 200
    with pytest.raises(ConfigurationError) as info:
        settings.for_task(name, [RateLimit("1/s")], None)
    assert (info.value.task, info.value.field) == (name, "name")


@pytest.mark.parametrize("prefix", ["tg\x00", "t g", "tg\n", "{tg}", "tg\x1b", "p" * 201])
def test_a_bad_key_prefix_names_key_prefix(prefix: str) -> None:
    for build in (
        lambda: Settings.from_mapping({"key_prefix": prefix}),
        lambda: KeySchema(prefix),
        lambda: taskguard.connect("memory://", prefix=prefix),
    ):
        with pytest.raises(ConfigurationError) as info:
            build()
        assert info.value.field == "key_prefix"


def test_a_bad_tag_names_tag() -> None:
    with pytest.raises(ConfigurationError) as info:
        KeySchema("tg", "")
    assert info.value.field == "tag"
    assert KeySchema("tg", "a:{b}").lock("x") == "tg:{a%3A%7Bb%7D}:lock:x"


@pytest.mark.parametrize("command", [drain, requeue_dead_letters])
def test_the_cli_names_the_prefix_option(command: Any) -> None:
    args = ["--redis-url", "memory://", "--prefix", "tg\x00"]
    if command is drain:
        args += ["--store", "sqlite://"]
    else:
        args += ["--namespace", "users"]
    result = CliRunner().invoke(command, args)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--prefix'" in result.output
