"""taskguard's Django system check, in-process: Django's settings are never configured here.

The check's work is :func:`messages_for`, which takes the settings as a mapping, so these
tests hand it one and point ``TASKGUARD_CELERY_APP`` at apps they build (a module put in
``sys.modules`` for the test). ``manage.py check`` itself runs on the example project, in
a subprocess (tests/unit/test_django_example.py).
"""

from __future__ import annotations

import ast
import sys
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, signals
from django.core import checks as django_checks

import taskguard
import taskguard.contrib.django as package
from taskguard import GuardedTask, Lock, RateLimit
from taskguard.contrib.django import checks
from taskguard.contrib.django.apps import TaskguardConfig

pytestmark = pytest.mark.usefixtures("isolated")  # the apps here must not leak

SETTINGS = {"redis_url": "memory://"}


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    """A Celery app importable as ``<module>:app``; its path is ``app.path``."""
    app = Celery("shop", broker="memory://", set_as_current=False)
    app.conf.taskguard = SETTINGS
    name = f"tg_django_{uuid.uuid4().hex[:8]}"
    module = types.ModuleType(name)
    module.app = app  # type: ignore[attr-defined]
    module.not_an_app = object()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, name, module)
    app.path = f"{name}:app"  # type: ignore[attr-defined]
    try:
        yield app
    finally:
        app.close()


def guarded(app: Celery, name: str, guards: list[Any]) -> Any:
    def run(order_id: int) -> None: ...

    return app.task(run, name=name, base=GuardedTask, guards=guards)


def summary(messages: list[Any]) -> list[tuple[str, str, str]]:
    return [(m.id, str(m.obj), m.msg) for m in messages]


def conf(app: Celery, **taskguard: Any) -> dict[str, Any]:
    """Django settings naming ``app``, which reads them too (as its
    ``config_from_object("django.conf:settings", namespace="CELERY")`` would)."""
    settings = {**SETTINGS, **taskguard}
    app.conf.taskguard = settings
    return {"TASKGUARD_CELERY_APP": app.path, "CELERY_TASKGUARD": settings}  # type: ignore[attr-defined]


def test_a_valid_project_has_no_message(app: Celery) -> None:
    guarded(app, "shop.send", [RateLimit("5/s")])
    guarded(app, "shop.rebuild", [Lock(key="{order_id}")])

    assert checks.messages_for(conf(app, tasks={"shop.send": {"rate_limit": "10/s"}})) == []


def test_an_invalid_global_setting_is_one_error_naming_the_field(app: Celery) -> None:
    guarded(app, "shop.send", [RateLimit("5/s")])

    messages = checks.messages_for(conf(app, max_deferrals=-1))

    assert summary(messages) == [
        (
            "taskguard.E001",
            "CELERY_TASKGUARD",
            "[field 'max_deferrals'] must be an integer >= 0, got -1",
        )
    ]
    assert messages[0].is_serious()
    assert "settings" in messages[0].hint


def test_a_bad_task_entry_names_its_pattern_and_field(app: Celery) -> None:
    messages = checks.messages_for(conf(app, tasks={"shop.*": {"rate_limit": "10/x"}}))

    assert [(id_, obj) for id_, obj, _ in summary(messages)] == [("taskguard.E001", "shop.*")]
    assert messages[0].msg.startswith("[field 'rate_limit'] invalid rate '10/x'")


def test_every_bad_task_is_reported_not_only_the_first(app: Celery) -> None:
    guarded(app, "shop.rebuild", [Lock(key="{invoice}")])
    guarded(app, "shop.export", [RateLimit("1/s", key="{customer}")])
    guarded(app, "shop.fine", [RateLimit("1/s", key="{order_id}")])

    messages = checks.messages_for(conf(app))

    assert sorted(summary(messages)) == [
        (
            "taskguard.E001",
            "shop.export",
            "[field 'key'] key template '{customer}' names argument 'customer', which the "
            "task does not take (its arguments: order_id)",
        ),
        (
            "taskguard.E001",
            "shop.rebuild",
            "[field 'lock.key'] key template '{invoice}' names argument 'invoice', which the "
            "task does not take (its arguments: order_id)",
        ),
    ]
    assert "CELERY_TASKGUARD['tasks']" in messages[0].hint


def test_an_override_is_checked_against_the_task_it_applies_to(app: Celery) -> None:
    guarded(app, "shop.rebuild", [Lock(key="{order_id}")])

    messages = checks.messages_for(conf(app, tasks={"shop.rebuild": {"lock": {"key": "{x}"}}}))

    assert [(id_, obj) for id_, obj, _ in summary(messages)] == [("taskguard.E001", "shop.rebuild")]
    assert messages[0].msg.startswith("[field 'lock.key'] key template '{x}'")


def test_a_task_pattern_matching_nothing_is_a_warning(app: Celery) -> None:
    guarded(app, "shop.send", [RateLimit("5/s")])

    messages = checks.messages_for(conf(app, tasks={"shop.sned": {"rate_limit": "1/s"}}))

    assert summary(messages) == [
        (
            "taskguard.W001",
            "CELERY_TASKGUARD",
            "the entry 'shop.sned' of 'tasks' matches no task of Celery app 'shop'",
        )
    ]
    assert not messages[0].is_serious()


@pytest.mark.parametrize(
    ("attribute", "expected"),
    [
        ("nothing_here", "cannot import the Celery app '{path}': AttributeError("),
        ("not_an_app", "'{path}' is a object, not a Celery app"),
    ],
)
def test_a_celery_app_that_cannot_be_loaded_is_an_error(
    app: Celery, attribute: str, expected: str
) -> None:
    path = app.path.replace(":app", f":{attribute}")  # type: ignore[attr-defined]

    messages = checks.messages_for({"TASKGUARD_CELERY_APP": path})

    assert [(m.id, m.obj) for m in messages] == [("taskguard.E002", "TASKGUARD_CELERY_APP")]
    assert messages[0].msg.startswith(expected.format(path=path))


def test_a_missing_module_is_an_error() -> None:
    messages = checks.messages_for({"TASKGUARD_CELERY_APP": "tg_no_such_module.celery.app"})

    assert [m.id for m in messages] == ["taskguard.E002"]
    assert "ModuleNotFoundError" in messages[0].msg


def test_the_app_may_be_named_inside_the_settings_dict_in_dotted_form(app: Celery) -> None:
    guarded(app, "shop.rebuild", [Lock(key="{invoice}")])
    dotted = app.path.replace(":", ".")  # type: ignore[attr-defined]

    messages = checks.messages_for({"CELERY_TASKGUARD": {**SETTINGS, "celery_app": dotted}})

    assert [(m.id, m.obj) for m in messages] == [("taskguard.E001", "shop.rebuild")]


def test_an_invalid_app_path_is_a_setting_error() -> None:
    messages = checks.messages_for({"TASKGUARD_CELERY_APP": "proj"})

    assert summary(messages) == [
        (
            "taskguard.E001",
            "CELERY_TASKGUARD",
            "[field 'celery_app'] must be an import path such as 'proj.celery:app', got 'proj'",
        )
    ]


def test_task_modules_are_imported_as_a_worker_imports_them(app: Celery) -> None:
    name = f"tg_django_tasks_{uuid.uuid4().hex[:8]}"
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        # What `imports`/autodiscovery would import: the module registers a bad task.
        module.task = guarded(app, "shop.late", [Lock(key="{nope}")])  # type: ignore[attr-defined]
        app.conf.imports = [name]

        assert [m.obj for m in checks.messages_for(conf(app))] == ["shop.late"]
    finally:
        del sys.modules[name]


def test_task_modules_that_fail_to_import_are_an_error(app: Celery) -> None:
    app.conf.imports = ["tg_no_such_tasks_module"]

    messages = checks.messages_for(conf(app))

    assert [m.id for m in messages] == ["taskguard.E002"]
    assert messages[0].msg.startswith("cannot import the tasks of Celery app 'shop'")


def test_a_starting_worker_imports_the_task_modules_itself(app: Celery) -> None:
    app.conf.imports = ["tg_no_such_tasks_module"]
    app.loader.worker_initialized = True  # Celery's Django fixup runs the checks from there

    assert checks.messages_for(conf(app)) == []


def test_a_nested_run_from_celerys_django_fixup_reports_nothing(app: Celery) -> None:
    """Importing task modules sends import_modules, on which Celery's Django fixup runs
    every system check again; that run must not recurse nor report twice."""
    nested: list[list[Any]] = []

    def fixup(**kwargs: Any) -> None:
        nested.append(checks.messages_for({"CELERY_TASKGUARD": {"max_deferrals": -1}}))

    signals.import_modules.connect(fixup, sender=app, weak=False)
    try:
        guarded(app, "shop.send", [RateLimit("5/s")])
        assert checks.messages_for(conf(app)) == []
    finally:
        signals.import_modules.disconnect(fixup, sender=app)
    assert nested == [[]]
    # ... and a later run is a run again.
    assert [m.id for m in checks.messages_for({"CELERY_TASKGUARD": {"max_deferrals": -1}})] == [
        "taskguard.E001"
    ]


def test_settings_the_app_reads_from_elsewhere_are_checked_too(app: Celery) -> None:
    django = conf(app)
    app.conf.taskguard = {"redis_url": "memory://", "enabled": "yes"}

    messages = checks.messages_for(django)

    assert summary(messages) == [
        ("taskguard.E001", "CELERY_TASKGUARD", "[field 'enabled'] must be true or false, got 'yes'")
    ]


def test_without_a_setting_the_current_app_is_checked() -> None:
    app = Celery("current", broker="memory://")  # the current app, as proj/__init__ makes it
    try:
        app.conf.taskguard = SETTINGS
        guarded(app, "current.rebuild", [Lock(key="{invoice}")])

        messages = checks.messages_for({"CELERY_TASKGUARD": SETTINGS})

        assert [(m.id, m.obj) for m in messages] == [("taskguard.E001", "current.rebuild")]
    finally:
        app.close()


def test_a_guessed_app_without_guarded_tasks_is_a_warning() -> None:
    app = Celery("plain", broker="memory://")
    try:
        messages = checks.messages_for({"CELERY_TASKGUARD": SETTINGS})
    finally:
        app.close()

    assert summary(messages) == [
        (
            "taskguard.W002",
            "TASKGUARD_CELERY_APP",
            "the Celery app 'plain' has no guarded task, so only the taskguard settings "
            "were checked",
        )
    ]


def test_a_named_app_without_guarded_tasks_is_fine(app: Celery) -> None:
    assert checks.messages_for(conf(app)) == []


def test_the_registered_check_reads_djangos_settings(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    guarded(app, "shop.rebuild", [Lock(key="{invoice}")])

    class Settings:  # stands in for django.conf.settings
        TASKGUARD_CELERY_APP = app.path  # type: ignore[attr-defined]
        CELERY_TASKGUARD = SETTINGS
        CELERY_TASKGUARD_MAX_DEFERRALS = 5
        DEBUG = True

    monkeypatch.setattr(checks, "django_settings", Settings())

    assert [m.obj for m in checks.check_taskguard(app_configs=None)] == ["shop.rebuild"]


def test_the_django_app_registers_the_check_when_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    registered: list[tuple[Callable[..., Any], tuple[str, ...]]] = []
    monkeypatch.setattr(
        django_checks, "register", lambda check, *tags: registered.append((check, tags))
    )

    config = TaskguardConfig("taskguard.contrib.django", package)
    config.ready()

    assert (config.label, registered) == ("taskguard", [(checks.check_taskguard, ("taskguard",))])


def test_only_the_contrib_package_imports_django() -> None:
    """Django stays optional: taskguard imports it nowhere else, not even in a function."""
    package = Path(taskguard.__file__).parent
    importers = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            if any(name == "django" or name.startswith("django.") for name in names):
                importers.add(path.relative_to(package).as_posix())
    assert importers == {"contrib/django/apps.py", "contrib/django/checks.py"}
