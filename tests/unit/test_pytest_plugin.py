"""taskguard.pytest, the plugin for users' test suites: its fixtures in a pytest session run
by ``pytester`` (the example of docs/testing.md, as written there), and ``GuardedRunner``
directly."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from taskguard import (
    Concurrency,
    ConcurrencyLimitReached,
    GuardedTask,
    Lock,
    LockHeld,
    MemoryBackend,
    RateLimit,
    RateLimited,
)
from taskguard.celery import runtime_for
from taskguard.clock import FakeClock
from taskguard.pytest import GuardedRunner

ROOT = Path(__file__).resolve().parents[2]
_TITLED = re.compile(r'^```py title="(?P<title>[^"]+)"\n(?P<source>.*?)^```$', re.M | re.S)

pytestmark = pytest.mark.usefixtures("isolated")  # the apps here must not leak


def docs_files(page: str) -> dict[str, str]:
    """The ``py title="..."`` blocks of a docs page, by title."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    return {m["title"]: m["source"] for m in _TITLED.finditer(text)}


def test_the_documented_example_passes(pytester: pytest.Pytester) -> None:
    blocks = docs_files("testing.md")
    for name in ("conftest.py", "notifications.py", "test_notifications.py"):
        pytester.path.joinpath(name).write_text(blocks[name])

    # Any warning fails it; but this process imported the plugin already, which the
    # session run inline here would warn about (a user's session does not).
    result = pytester.runpytest(
        "-p",
        "no:cacheprovider",
        "-W",
        "error",
        "-W",
        "ignore:Module already imported:pytest.PytestAssertRewriteWarning",
    )

    result.assert_outcomes(passed=3)


def test_an_unexpected_denial_fails_the_test(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["taskguard.pytest"]')
    pytester.makepyfile(
        test_denied="""
        from celery import Celery
        from taskguard import GuardedTask, RateLimit

        app = Celery("denied", set_as_current=False)

        @app.task(base=GuardedTask, guards=[RateLimit("1/h")])
        def report():
            return "done"

        def test_twice(run_guarded):
            assert run_guarded(report) == "done"
            run_guarded(report)
        """
    )

    result = pytester.runpytest("-p", "no:cacheprovider")

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*RateLimited: RateLimit('1/h', name='test_denied.report')*"])


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("runner", set_as_current=False)
    app.conf.taskguard = {"redis_url": "redis://redis.invalid:6379/1"}
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def runner() -> Iterator[GuardedRunner]:
    runner = GuardedRunner(MemoryBackend(clock=FakeClock()))
    try:
        yield runner
    finally:
        runner.close()


def test_the_app_gets_its_backend_back(app: Celery, runner: GuardedRunner) -> None:
    earlier = MemoryBackend()
    runtime_for(app).backend = earlier

    @app.task(base=GuardedTask, guards=[RateLimit("1/m")])
    def ping() -> str:
        return "pong"

    assert runner(ping) == "pong"
    assert runtime_for(app).backend is runner.backend
    runner.close()

    assert runtime_for(app).backend is earlier
    with pytest.raises(RateLimited):  # bound again, to its backend, where the minute is spent
        runner(ping)


def test_settings_are_read_afresh(app: Celery, runner: GuardedRunner) -> None:
    @app.task(base=GuardedTask, guards=[RateLimit("1/m")])
    def ping() -> str:
        return "pong"

    assert [g.rate for g in ping.taskguard_settings.guards] == [RateLimit("1/m").rate]
    app.conf.taskguard = {"tasks": {"*.ping": {"rate_limit": "2/m", "burst": 2}}}

    assert [runner(ping), runner(ping)] == ["pong", "pong"]
    with pytest.raises(RateLimited):
        runner(ping)


def test_a_bound_app_is_guarded_through_delay_too(app: Celery, runner: GuardedRunner) -> None:
    app.conf.task_always_eager = True

    @app.task(base=GuardedTask, guards=[Lock(key="{n}")])
    def hold(n: int) -> int:
        # Another run for the same key while this one holds the lock.
        inner = hold.delay(n)
        assert isinstance(inner.result, LockHeld)
        return n

    runner.bind(app)
    runner.bind(app)  # once is enough; twice changes nothing

    assert hold.delay(3).get() == 3


def test_what_the_task_raises_comes_through(app: Celery, runner: GuardedRunner) -> None:
    @app.task(base=GuardedTask, guards=[RateLimit("5/s")])
    def broken() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        runner(broken)


def test_the_refusal_names_the_guard(app: Celery, runner: GuardedRunner) -> None:
    @app.task(bind=True, base=GuardedTask, guards=[Concurrency(1, key="{tenant}")])
    def work(self: GuardedTask, tenant: str) -> str:
        with pytest.raises(ConcurrencyLimitReached) as refused:
            runner(work, tenant)
        assert refused.value.retry_after > 0
        return runner(work, "other") if tenant == "a" else tenant

    assert runner(work, "a") == "other"
