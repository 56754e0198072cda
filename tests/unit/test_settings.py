"""Settings: every invalid value is a ConfigurationError naming the task and the field."""

from datetime import timedelta
from typing import Any

import pytest
from celery import Celery

from taskguard import ConfigurationError, GuardedTask, RateLimit
from taskguard.celery._runtime import runtime_for
from taskguard.celery._settings import DeferralPolicy, Settings, read_app_config


def make_app(config: dict[str, Any] | None = None, **flat: Any) -> Celery:
    app = Celery("proj", broker="memory://", set_as_current=False)
    if config is not None:
        app.conf.taskguard = config
    for key, value in flat.items():
        app.conf[key] = value
    return app


def sig(func: Any) -> Any:
    import inspect

    return inspect.signature(func)


def send_email(customer_id: int, subject: str = "") -> None: ...


def test_defaults() -> None:
    settings = Settings.from_mapping({})
    assert settings.key_prefix == "tg"
    assert settings.deferral == DeferralPolicy()
    assert settings.for_task("t").guards == ()


def test_three_spellings_merge() -> None:
    app = make_app({"key_prefix": "a", "socket_timeout": 1}, taskguard_key_prefix="b")
    raw = read_app_config(app.conf)
    assert raw == {"key_prefix": "b", "socket_timeout": 1}


def test_django_namespace(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "djsettings.py").write_text(
        "CELERY_TASKGUARD = {'key_prefix': 'dj'}\nCELERY_TASKGUARD_MAX_DEFERRALS = 7\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    app = Celery("proj", set_as_current=False)
    app.config_from_object("djsettings", namespace="CELERY")
    settings = Settings.from_app(app)
    assert settings.key_prefix == "dj"
    assert settings.deferral.max_deferrals == 7


def test_global_values_are_validated_and_converted() -> None:
    settings = Settings.from_mapping(
        {
            "redis_url": "redis://h:1/2",
            "socket_timeout": timedelta(milliseconds=200),
            "max_deferral_age": 60,
            "on_deferral_exhausted": "dead_letter",
            "deferral_jitter": 0,
            "on_outage": "deny",
            "redis_options": {"ssl_ca_certs": "/ca.pem"},
            "enabled": True,
        }
    )
    assert settings.socket_timeout == 0.2
    assert settings.deferral.max_age == 60.0
    assert settings.deferral.on_exhausted == "dead_letter"
    assert settings.deferral.jitter == 0.0
    assert settings.on_outage == {
        "rate_limit": "deny",
        "lock": "deny",
        "concurrency": "deny",
        "circuit_breaker": "deny",
        "quota": "deny",
        "debounce": "deny",  # every registered guard kind
    }


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"nope": 1}, "nope"),
        ({"socket_timeout": -1}, "socket_timeout"),
        ({"socket_timeout": "1s"}, "socket_timeout"),
        ({"key_prefix": ""}, "key_prefix"),
        ({"max_deferrals": -1}, "max_deferrals"),
        ({"max_deferrals": 1.5}, "max_deferrals"),
        ({"on_deferral_exhausted": "explode"}, "on_deferral_exhausted"),
        ({"on_outage": "maybe"}, "on_outage"),
        ({"on_outage": {"teleport": "deny"}}, "on_outage.teleport"),
        ({"on_outage": 3}, "on_outage"),
        ({"redis_options": []}, "redis_options"),
        ({"enabled": "yes"}, "enabled"),
        ({"tasks": []}, "tasks"),
        ({"reserve_within": float("inf")}, "reserve_within"),
        ({"reservation_grace": -1}, "reservation_grace"),
        ({"key_prefix": "a b"}, "key_prefix"),
        ({"key_prefix": "a{b}"}, "key_prefix"),
        ({"redis_url": "http://x"}, "redis_url"),
    ],
)
def test_invalid_global_settings(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_mapping(raw)
    assert info.value.field == field
    assert info.value.task is None
    assert f"field {field!r}" in str(info.value)


@pytest.mark.parametrize(
    ("entry", "field", "message"),
    [
        ({"rate_limit": "10/x"}, "rate_limit", "invalid rate '10/x'"),
        ({"rate_limit": "10/s", "burst": -1}, "burst", "positive integer"),
        ({"burst": -1}, "burst", "positive integer"),  # a tweak of the class's limits
        ({"rate_limit": "10/s", "burst": "5"}, "burst", "positive integer"),
        ({"rate_limit": "10/s", "cost": 0}, "cost", "positive integer"),
        ({"rate_limit": 10}, "rate_limit", "rate like '10/s'"),
        ({"rate_limit": {"rate": "1/s", "colour": "red"}}, "rate_limit.colour", "unknown"),
        ({"rate_limit": {"burst": 2}}, "rate_limit", "needs 'rate'"),
        ({"rate_limit": "10/s", "rate_limit_key": 5}, "key", "template string"),
        ({"rate_limit": "10/s", "rate_limit_key": "{0}"}, "key", "must name arguments"),
        ({"ratelimit": "10/s"}, "ratelimit", "unknown setting"),
        ({"on_outage": "never"}, "on_outage", "must be one of"),
        ({"max_deferral_age": "1h"}, "max_deferral_age", "seconds"),
        ({"enabled": 1}, "enabled", "true or false"),
    ],
)
def test_invalid_task_settings_name_pattern_and_field(
    entry: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        Settings.from_mapping({"tasks": {"proj.tasks.send_*": entry}})
    assert info.value.task == "proj.tasks.send_*"
    assert info.value.field == field


def test_key_template_naming_a_missing_argument() -> None:
    settings = Settings.from_mapping(
        {"tasks": {"proj.send_email": {"rate_limit": "1/s", "rate_limit_key": "{user_id}"}}}
    )
    with pytest.raises(ConfigurationError, match="names argument 'user_id'") as info:
        settings.for_task("proj.send_email", (), sig(send_email))
    assert (info.value.task, info.value.field) == ("proj.send_email", "key")


def test_class_guard_key_is_validated_against_the_task() -> None:
    with pytest.raises(ConfigurationError, match="customer") as info:
        Settings().for_task("t", [RateLimit("1/s", key="{customer}")], sig(send_email))
    assert info.value.task == "t"


def test_key_template_accepts_var_keyword() -> None:
    def anything(**kwargs: Any) -> None: ...

    bound = Settings().for_task("t", [RateLimit("1/s", key="{whatever}")], sig(anything))
    assert bound.guards[0].bucket((), {"whatever": "x"}) == "x"  # type: ignore[attr-defined]


def test_glob_then_exact_override_class_guards() -> None:
    settings = Settings.from_mapping(
        {
            "tasks": {
                "proj.*": {"rate_limit": "100/s", "max_deferrals": 5},
                "proj.send_*": {"rate_limit": ["10/s", {"rate": "1000/d", "name": "daily"}]},
                "proj.send_email": {"burst": 3, "rate_limit_key": "{customer_id}"},
            }
        }
    )
    class_guards = [RateLimit("1/s")]
    resolved = settings.for_task("proj.send_email", class_guards, sig(send_email))
    assert [repr(g) for g in resolved.guards] == [
        "RateLimit('10/s', key='{customer_id}', burst=3, name='proj.send_email')",
        "RateLimit('1000/d', key='{customer_id}', burst=3, name='daily')",
    ]
    assert resolved.deferral.max_deferrals == 5
    other = settings.for_task("proj.other", class_guards, None)
    assert [repr(g) for g in other.guards] == ["RateLimit('100/s', name='proj.other')"]
    untouched = settings.for_task("elsewhere.task", class_guards, None)
    assert [repr(g) for g in untouched.guards] == ["RateLimit('1/s', name='elsewhere.task')"]


def test_settings_tweak_class_guards_without_replacing_them() -> None:
    settings = Settings.from_mapping(
        {"on_outage": {"rate_limit": "local"}, "tasks": {"t": {"burst": 4}}}
    )
    resolved = settings.for_task("t", [RateLimit("5/s", name="shared")], None)
    assert [repr(g) for g in resolved.guards] == [
        "RateLimit('5/s', burst=4, name='shared', on_outage='local')"
    ]


def test_rate_limit_none_removes_class_limits_and_enabled_false() -> None:
    settings = Settings.from_mapping(
        {"tasks": {"a": {"rate_limit": None}, "b": {"enabled": False}}}
    )
    assert settings.for_task("a", [RateLimit("1/s")], None).guards == ()
    assert settings.for_task("b", [RateLimit("1/s")], None).enabled is False


def test_patterns_matching_nothing() -> None:
    settings = Settings.from_mapping({"tasks": {"proj.send_*": {}, "typo.tsk": {}}})
    assert settings.patterns_matching_nothing(["proj.send_email"]) == ["typo.tsk"]


# ---- through a Celery app: what the worker validates at start -------------------------


def test_runtime_validate_names_task_and_field() -> None:
    app = make_app({"tasks": {"proj.send": {"rate_limit": "10/s", "rate_limit_key": "{nope}"}}})

    @app.task(shared=False, base=GuardedTask, name="proj.send")
    def send(customer_id: int) -> None: ...

    with pytest.raises(ConfigurationError) as info:
        runtime_for(app).validate()
    assert (info.value.task, info.value.field) == ("proj.send", "key")
    assert "[task 'proj.send', field 'key']" in str(info.value)


@pytest.mark.parametrize(
    ("guards", "message"),
    [(RateLimit("1/s"), "must be a list"), (["10/s"], "must contain guards")],
)
def test_runtime_validate_rejects_bad_guards_attribute(guards: Any, message: str) -> None:
    app = make_app()

    @app.task(shared=False, base=GuardedTask, name="proj.bad", guards=guards)
    def bad() -> None: ...

    with pytest.raises(ConfigurationError, match=message) as info:
        runtime_for(app).validate()
    assert (info.value.task, info.value.field) == ("proj.bad", "guards")


def test_runtime_validate_warns_about_unmatched_patterns(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app({"tasks": {"proj.typo": {"rate_limit": "1/s"}}})

    @app.task(shared=False, base=GuardedTask, name="proj.real", guards=[RateLimit("1/s")])
    def real() -> None: ...

    resolved = runtime_for(app).validate()
    assert [t.name for t in resolved] == ["proj.real"]
    assert "match no registered task" in caplog.text


def test_runtime_redis_url_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKGUARD_REDIS_URL", raising=False)
    assert runtime_for(make_app()).redis_url() == "redis://localhost:6379/0"
    app = Celery("p", broker="redis://broker:6379/3", set_as_current=False)
    assert runtime_for(app).redis_url() == "redis://broker:6379/3"
    monkeypatch.setenv("TASKGUARD_REDIS_URL", "redis://env:1/0")
    assert runtime_for(app).redis_url() == "redis://env:1/0"
    configured = make_app({"redis_url": "redis://conf:1/0"})
    assert runtime_for(configured).redis_url() == "redis://conf:1/0"
