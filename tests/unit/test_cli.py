"""The ``taskguard`` command line: help, version, and the demo command's wiring.

The demo itself (real workers, a real Redis) is run by ``scripts/demo``; here its runner
is replaced so only the command's option handling and exit codes are exercised, and the
breaker stage's verdict (part of the exit code) is checked on made-up records.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from importlib.metadata import entry_points
from typing import Any

import pytest
from click.testing import CliRunner

import taskguard
from taskguard.cli import main
from taskguard.cli import taskguard as cli
from taskguard.demo import runner
from taskguard.demo.breaker_report import (
    BreakerResult,
    breaker_held,
    breaker_verdict,
    render_timeline,
)
from taskguard.demo.partner import PartnerCall, PartnerStub
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
    assert "CircuitBreaker" in result.output


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


def _breaker_result(*, call_while_open: bool = False, in_flight: int = 0) -> BreakerResult:
    """A breaker stage as the demo records it: healthy, failing, open, probe, closed."""
    runs, calls = [], []

    def call(t: float, status: int, deferrals: int = 0) -> None:
        task = f"task-{len(runs)}"
        calls.append(PartnerCall(t, status, task))
        runs.append(
            {"id": task, "status": status, "retries": 0, "deferrals": deferrals,
             "worker": f"tgdemo-x-breaker{len(runs) % 3 + 1}@host"}
        )  # fmt: skip

    for i in range(6):
        call(100 + i * 0.5, 200)
    for i in range(5):
        call(103 + i * 0.05, 500)
    for i in range(in_flight):
        call(103.3 + i * 0.01, 500)
    if call_while_open:
        call(104, 500)
    call(105.3, 200, deferrals=1)  # the probe
    for i in range(10):
        call(105.5 + i * 0.1, 200, deferrals=1 if i < 6 else 0)
    transitions = [
        {"t": 103.3, "old": "closed", "new": "open", "reason": "x", "task_id": "task-10"},
        {"t": 105.3, "old": "open", "new": "half_open", "reason": "x", "task_id": "task-11"},
        {"t": 105.31, "old": "half_open", "new": "closed", "reason": "x", "task_id": "task-11"},
    ]
    failed = [r["id"] for r in runs if r["status"] == 500]
    return BreakerResult(
        workers=3,
        slots=3,
        rate=20,
        start=100.0,
        end=107.0,
        published={r["id"]: 100.0 for r in runs},
        calls=calls,
        switches=[(103.0, False), (104.3, True)],
        transitions=transitions,
        runs=runs,
        failures=[{"id": i, "error": "PartnerDown", "by_taskguard": False} for i in failed],
        deferrals=9,
    )


def test_breaker_verdict_holds_on_a_clean_run() -> None:
    result = _breaker_result(in_flight=2)  # admitted before it opened: not counted
    assert breaker_held(result)
    tag, sentence = breaker_verdict(result)
    assert tag == "HELD"
    assert "0 calls from any of the 3 workers while open; 1 probe" in sentence
    assert "7 deferred tasks completed" in sentence
    timeline = render_timeline(result)
    assert "2 in flight at the open" in timeline
    assert "the probe" in timeline


def test_breaker_verdict_fails_on_a_call_while_open() -> None:
    result = _breaker_result(call_while_open=True)
    assert not breaker_held(result)
    tag, sentence = breaker_verdict(result)
    assert tag == "FAIL"
    assert "the stub got 1 calls while it was open" in sentence


def test_breaker_verdict_fails_when_a_deferred_task_fails() -> None:
    result = _breaker_result()
    result.failures.append({"id": "task-12", "error": "CircuitOpen", "by_taskguard": True})
    assert not breaker_held(result)
    assert "1 tasks ended FAILURE because of it" in breaker_verdict(result)[1]


def test_partner_stub_logs_and_switches() -> None:
    with PartnerStub() as stub:
        with urllib.request.urlopen(f"{stub.url}/?task=a", timeout=5) as reply:
            assert reply.read() == b"ok"
        stub.set_healthy(False)
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(f"{stub.url}/?task=b", timeout=5)
        failed.value.close()
        assert [(c.status, c.task) for c in stub.calls_snapshot()] == [(200, "a"), (500, "b")]


@pytest.mark.parametrize("variable", ["TASKGUARD_STORE_URL", "TASKGUARD_DB_URL"])
def test_drain_takes_the_store_from_either_environment_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    from taskguard.cli.drain import drain

    monkeypatch.delenv("TASKGUARD_STORE_URL", raising=False)
    monkeypatch.delenv("TASKGUARD_DB_URL", raising=False)
    monkeypatch.setenv(variable, "sqlite:///from-env.db")
    context = drain.make_context("drain", ["--redis-url", "redis://localhost:6379/0"])
    assert context.params["store_url"] == "sqlite:///from-env.db"
