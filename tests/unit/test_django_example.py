"""The Django example project in deploy/django, run for real: ``manage.py check`` in a
subprocess passes on it as shipped, and fails with taskguard's error id when a bad setting
is injected (a settings module of the test's own that imports the project's and changes
one thing). Django is only ever set up in those subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "deploy" / "django"


def run(
    *args: str, settings: str | None = None, path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python <args>`` in the project, with this checkout's taskguard and no server."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *([str(path)] if path else []), os.environ.get("PYTHONPATH", "")]
        ),
        "CELERY_BROKER_URL": "memory://",
        "TASKGUARD_REDIS_URL": "memory://",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    if settings:
        env["DJANGO_SETTINGS_MODULE"] = settings
    return subprocess.run(
        [sys.executable, "-W", "error", *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_project_passes_manage_py_check() -> None:
    done = run("manage.py", "check")

    assert done.returncode == 0, done.stderr
    assert "System check identified no issues" in done.stdout


def test_its_tasks_import_and_their_guards_resolve() -> None:
    script = textwrap.dedent(
        """
        import json, django
        django.setup()
        from celery import current_app
        from taskguard.celery import runtime_for
        from orders import tasks
        import mysite

        assert current_app._get_current_object() is mysite.celery_app
        print(json.dumps({
            s.name: [repr(g) for g in s.guards] for s in runtime_for(mysite.celery_app).validate()
        }))
        """
    )
    done = run("-c", script, settings="mysite.settings")

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "orders.tasks.send_confirmation": [
            "RateLimit('10/s', name='orders.tasks.send_confirmation')"
        ],
        "orders.tasks.rebuild_invoice": [
            "Lock(key='{order_id}', name='orders.tasks.rebuild_invoice')"
        ],
    }


@pytest.mark.parametrize(
    ("change", "task", "field"),
    [
        # Read with the settings: an invalid rate in a task entry.
        (
            '{"orders.tasks.send_confirmation": {"rate_limit": "ten a second"}}',
            "orders.tasks.send_confirmation",
            "[field 'rate_limit'] invalid rate 'ten a second'",
        ),
        # Found resolving the task: a lock key naming an argument it does not take.
        (
            '{"orders.tasks.rebuild_invoice": {"lock": {"key": "{invoice_id}"}}}',
            "orders.tasks.rebuild_invoice",
            "[field 'lock.key'] key template '{invoice_id}' names argument 'invoice_id'",
        ),
    ],
    ids=["settings", "task"],
)
def test_manage_py_check_fails_on_a_bad_setting(
    tmp_path: Path, change: str, task: str, field: str
) -> None:
    (tmp_path / "bad_settings.py").write_text(
        "from mysite.settings import *  # noqa: F403\n"
        "from mysite.settings import CELERY_TASKGUARD\n\n"
        f"CELERY_TASKGUARD = {{**CELERY_TASKGUARD, 'tasks': {change}}}\n"
    )

    done = run("manage.py", "check", settings="bad_settings", path=tmp_path)

    assert done.returncode == 1, done.stdout
    assert f"{task}: (taskguard.E001) {field}" in done.stderr, done.stderr
