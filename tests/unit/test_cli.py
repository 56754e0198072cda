"""The ``taskguard`` command line: help, version, and the demo command's wiring.

The demo itself (real workers, a real Redis) is run by ``scripts/demo``; here its runner
is replaced so only the command's option handling and exit codes are exercised.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from typing import Any

import pytest
from click.testing import CliRunner

import taskguard
from taskguard.cli import main
from taskguard.cli import taskguard as cli
from taskguard.demo import runner
from taskguard.demo.runner import DemoOptions
from taskguard.demo.stages import DemoError


@pytest.fixture
def run() -> CliRunner:
    return CliRunner()


def test_help_lists_commands(run: CliRunner) -> None:
    result = run.invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "demo" in result.output
    assert "version" in result.output


def test_version_command_and_option(run: CliRunner) -> None:
    for args in (["version"], ["--version"]):
        result = run.invoke(cli, args)
        assert result.exit_code == 0
        assert result.output.startswith(f"taskguard {taskguard.__version__} (celery ")


def test_demo_help(run: CliRunner) -> None:
    result = run.invoke(cli, ["demo", "--help"])
    assert result.exit_code == 0
    for option in ("--redis-url", "--db-url", "--seconds", "TASKGUARD_REDIS_URL"):
        assert option in result.output


def test_entry_points_name_the_group() -> None:
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts["taskguard"] == "taskguard.cli:main"
    commands = {ep.name: ep.value for ep in entry_points(group="celery.commands")}
    assert commands["taskguard"] == "taskguard.cli:taskguard"


def test_main_runs_the_group(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setattr(sys, "argv", ["taskguard", "version"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("taskguard ")


class FakeRun:
    """Stands in for :func:`taskguard.demo.runner.run_demo`."""

    def __init__(self, outcome: int | BaseException) -> None:
        self.outcome = outcome
        self.options: DemoOptions | None = None

    def __call__(self, options: DemoOptions, echo: Any, version: str) -> int:
        self.options = options
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


@pytest.mark.parametrize(
    ("outcome", "exit_code"),
    [(0, 0), (1, 1), (DemoError("no task started"), 1), (KeyboardInterrupt(), 130)],
)
def test_demo_exit_codes(
    run: CliRunner, monkeypatch: pytest.MonkeyPatch, outcome: Any, exit_code: int
) -> None:
    fake = FakeRun(outcome)
    monkeypatch.setattr(runner, "run_demo", fake)
    monkeypatch.delenv("TASKGUARD_REDIS_URL", raising=False)
    result = run.invoke(cli, ["demo", "--seconds", "3"])
    assert result.exit_code == exit_code, result.output
    assert fake.options == DemoOptions(seconds=3.0)
    if isinstance(outcome, DemoError):
        assert "no task started" in result.output


def test_demo_redis_url_from_environment(run: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRun(0)
    monkeypatch.setattr(runner, "run_demo", fake)
    monkeypatch.setenv("TASKGUARD_REDIS_URL", "redis://example.invalid:6379/5")
    monkeypatch.setenv("TASKGUARD_DB_URL", "sqlite:///x.db")
    assert run.invoke(cli, ["demo"]).exit_code == 0
    assert fake.options is not None
    assert fake.options.redis_url == "redis://example.invalid:6379/5"
    assert fake.options.redis_source == "TASKGUARD_REDIS_URL"
    assert fake.options.db_url == "sqlite:///x.db"

    assert run.invoke(cli, ["demo", "--redis-url", "redis://other:6379/1"]).exit_code == 0
    assert fake.options.redis_source == "--redis-url"


def test_demo_rejects_bad_options(run: CliRunner) -> None:
    result = run.invoke(cli, ["demo", "--workers", "1"])
    assert result.exit_code == 2
    assert "--workers" in result.output


def test_version_names_missing_libraries() -> None:
    from taskguard.cli.version import _installed

    assert _installed("celery-taskguard-no-such-distribution") == "not installed"
