"""``taskguard status`` without a server: the state formats read back (``status/derive.py``),
the admin actions on the memory backend, the tables, and the command's wiring with the
reader replaced. The reads against Redis are in tests/contract/test_status.py."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

import taskguard
from taskguard import GuardedTask, Lock, RateLimit
from taskguard.cli import taskguard as cli
from taskguard.cli._render import render_status, render_tasks
from taskguard.clock import FakeClock
from taskguard.errors import BackendUnavailable, ConfigurationError, LockLost
from taskguard.heartbeat import heartbeat_for
from taskguard.status import (
    BreakerStatus,
    DrainPoolStatus,
    LockHolder,
    ParkedLot,
    ParkedWork,
    PartitionLease,
    QuotaUsage,
    RateBucket,
    SlotHolder,
    SlotSet,
    Status,
    WriteBehindNamespace,
    force_breaker,
    read_status,
    release_lock,
)
from taskguard.status.derive import breaker_status, bucket, lock_holder, quota_usage, slot_set

from .celery_harness import DEAD_URL, celery_app

#: The module (``taskguard.cli.status`` is the command, which the package re-exports).
STATUS_MODULE = importlib.import_module("taskguard.cli.status")

NOW_US = 1_800_000_000_000_000  # 2027-01-15, in microseconds
NOW_MS = NOW_US // 1000

# ---------------------------------------------------------------- reading the formats


def test_a_bucket_shows_its_backlog_and_with_its_limit_its_tokens() -> None:
    tat = str(NOW_US + 2_500_000).encode()  # 2.5 s of tokens spent
    assert bucket("api", "t:1", tat, NOW_US) == RateBucket("api", "t:1", 2.5)
    # 1 token per second, burst 5: 2.5 spent, so 2 whole tokens can be taken now.
    assert bucket("api", "t:1", tat, NOW_US, (1.0, 5)) == RateBucket("api", "t:1", 2.5, 2, 5)
    # Exactly on a token boundary, as gcra.lua admits it.
    assert bucket("api", None, NOW_US + 3_000_000, NOW_US, (1.0, 5)).tokens == 2  # type: ignore[union-attr]


def test_a_bucket_level_is_bounded_by_zero_and_its_burst() -> None:
    past = bucket("api", None, NOW_US - 9_000_000, NOW_US, (1.0, 5))
    assert past == RateBucket("api", None, 0.0, 5, 5)  # idle: full
    ahead = bucket("api", None, NOW_US + 60_000_000, NOW_US, (1.0, 5))
    assert ahead == RateBucket("api", None, 60.0, 0, 5)  # a reservation far ahead: empty
    assert bucket("api", None, None, NOW_US) is None  # expired meanwhile


def test_a_lock_age_comes_from_a_timestamp_fencing_token() -> None:
    token = NOW_US - 4_000_000
    held = lock_holder(
        "lock", "report", "7", owner=b"tid:abc", pttl=25_000, fence=str(token), now_us=NOW_US
    )
    assert held == LockHolder("lock", "report", "7", "tid:abc", 25.0, token, 4.0)


def test_a_lock_age_is_unknown_without_a_timestamp_token() -> None:
    small = lock_holder("lock", "r", None, owner="o", pttl=1000, fence=b"42", now_us=NOW_US)
    assert small is not None
    assert (small.fencing_token, small.age) == (42, None)
    future = lock_holder(
        "lock", "r", None, owner="o", pttl=1000, fence=NOW_US + 5, now_us=NOW_US
    )  # handed out faster than the clock: not an age
    assert future is not None
    assert future.age is None
    claim = lock_holder("unique", "t", "k", owner="tid", pttl=-1)
    assert claim == LockHolder("unique", "t", "k", "tid", None)
    assert lock_holder("lock", "r", None, owner=None, pttl=-2) is None


def test_only_live_slot_holders_count() -> None:
    members = [(b"a", NOW_MS - 1.0), (b"b", NOW_MS + 1500.0), (b"c", NOW_MS + 30_000.0)]
    assert slot_set("cap", None, members, NOW_MS) == SlotSet(
        "cap", None, (SlotHolder("b", 1.5), SlotHolder("c", 30.0))
    )
    assert slot_set("cap", None, [(b"a", NOW_MS - 1.0)], NOW_MS) is None


def _breaker(fields: dict[str, Any], kind: str = "list", window: Any = None) -> BreakerStatus:
    found = breaker_status(
        "geo",
        fields={k.encode(): str(v).encode() for k, v in fields.items()},
        window_type=kind.encode(),
        window=window,
        probes=[(b"p1", NOW_MS + 500.0), (b"p0", NOW_MS - 1.0)],
        now_ms=NOW_MS,
    )
    assert found is not None
    return found


def test_a_count_window_breaker_shows_its_counters() -> None:
    found = _breaker({"state": "closed", "wc": 12, "wf": 3, "ws": 1, "consec": 2, "opens": 0})
    assert (found.state, found.window, found.calls, found.failures) == ("closed", "count", 12, 3)
    assert (found.slow_calls, found.consecutive_failures, found.open_left) == (1, 2, None)
    assert found.probes == 1  # the expired probe lease is not counted


def test_a_time_window_breaker_sums_its_seconds() -> None:
    second = NOW_MS // 1000
    window = {
        f"{second}:c".encode(): b"4",
        f"{second}:f".encode(): b"1",
        f"{second - 1}:c".encode(): b"3",
        f"{second - 1}:s".encode(): b"2",
    }
    found = _breaker({"state": "closed", "wc": 0}, "hash", window)
    assert (found.window, found.calls, found.failures, found.slow_calls) == ("time", 7, 1, 2)


@pytest.mark.parametrize(
    ("fields", "state", "left"),
    [
        ({"state": "open", "until": NOW_MS + 2500, "opens": 2}, "open", 2.5),
        ({"state": "open", "until": NOW_MS - 1}, "half_open", None),  # probe due
        ({"state": "half_open", "ok": 1}, "half_open", None),
        ({"state": "open", "until": NOW_MS + 2500, "forced": "open"}, "forced_open", None),
        ({"state": "closed", "forced": "disabled"}, "disabled", None),
    ],
)
def test_a_breaker_state_is_the_one_a_call_meets(
    fields: dict[str, Any], state: str, left: float | None
) -> None:
    found = _breaker(fields, "none")
    assert (found.state, found.open_left, found.window) == (state, left, "")
    assert (
        breaker_status("geo", fields={}, window_type=b"none", window=None, probes=None, now_ms=0)
        is None
    )


def test_a_quota_shows_its_window() -> None:
    start = NOW_MS - 3_600_000
    usage = quota_usage("sms", "+44", start=str(start).encode(), used=b"7", pttl=70_000)
    assert usage == QuotaUsage("sms", "+44", 7, start / 1000, 10.0)
    # In the grace after its window, the counter is not the current window's.
    over = quota_usage("sms", "+44", start=start, used=b"7", pttl=30_000)
    assert over == QuotaUsage("sms", "+44", 0, start / 1000, 0.0)
    assert quota_usage("sms", None, start=None, used=None, pttl=-2) is None


# ---------------------------------------------------------------- admin on the memory backend


@pytest.fixture
def memory() -> Iterator[taskguard.MemoryBackend]:
    backend = taskguard.MemoryBackend(clock=FakeClock(start=1_800_000_000.0))
    yield backend
    heartbeat_for(backend).stop()


def test_release_lock_frees_a_lock_whoever_holds_it(memory: taskguard.MemoryBackend) -> None:
    client = taskguard.connect(memory)
    held = client.lock("report", ttl=30, renew=False).acquire(timeout=0)
    done = release_lock(client, "report")
    assert done.owner is not None
    assert (done.released, done.parked, done.fencing_token) == (True, False, None)
    assert not client.lock("report").locked()
    with pytest.raises(LockLost):  # the old holder finds its lease gone
        held.release()
    again = client.lock("report", renew=False).try_acquire()
    assert again.allowed
    assert again.token is not None
    assert again.token > held.fencing_token


def test_release_lock_of_a_free_lock_does_nothing(memory: taskguard.MemoryBackend) -> None:
    done = release_lock(memory, "report", "7")
    assert (done.owner, done.released, done.key) == (None, False, "7")


def test_force_breaker_opens_closes_and_resets(memory: taskguard.MemoryBackend) -> None:
    breaker = taskguard.connect(memory).circuit_breaker("geo")
    opened = force_breaker(memory, "geo", "open")
    assert (opened.before, opened.after, opened.existed) == ("closed", "forced_open", None)
    assert breaker.state == "forced_open"
    assert force_breaker(memory, "geo", "close").after == "closed"
    assert force_breaker(memory, "geo", "reset").after == "closed"
    with pytest.raises(ValueError, match="action must be one of"):
        force_breaker(memory, "geo", "disable")


def test_the_status_needs_redis(memory: taskguard.MemoryBackend) -> None:
    with pytest.raises(ConfigurationError, match="status needs a Redis backend"):
        read_status(memory)


# ---------------------------------------------------------------- the tables


def full_status(**changes: Any) -> Status:
    values: dict[str, Any] = {
        "prefix": "tg",
        "server_time": NOW_US / 1_000_000,
        "elapsed": 0.012,
        "rate_limits": (RateBucket("api", "t:1", 2.5, 2, 5), RateBucket("mail", None, 30.0)),
        "locks": (
            LockHolder("lock", "proj.render", "[bold]7", "tid-1:ab", 25.0, 17, 4.0),
            LockHolder("unique", "proj.send", "x\ny", "tid-2", None),
        ),
        "slots": (SlotSet("partner", None, (SlotHolder("o1", 1.5), SlotHolder("o2", 30.0))),),
        "breakers": (
            BreakerStatus("geo", "open", 12.0, 1, "count", 20, 11, 0, 0, 0, 0),
            BreakerStatus("maps", "closed", None, 0, "time", 5, 0, 1, 0, 0, 0),
        ),
        "quotas": (QuotaUsage("sms", "+44", 7, 0.0, 3600.0),),
        "parked": ParkedWork((ParkedLot("slots", "partner", None, "tg:{tg}:slots:partner", 3),), 1),
        "write_behind": (
            WriteBehindNamespace("users", 2, 40, 1.5, 3, 1, (PartitionLease(0, "pool-a", 9.0),)),
        ),
        "drain_pools": (DrainPoolStatus("pool-a", 27.0),),
        "limits_known": ("api",),
    }
    return Status(**(values | changes))


def rendered(renderable: Any, width: int = 250) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_the_tables_show_every_kind_of_state() -> None:
    text = rendered(render_status(full_status(), "redis://h:6379/0", limit=10))
    for expected in (
        "prefix tg on redis://h:6379/0",
        "2 rate-limit bucket(s) · 2 lock(s) held · 2 slot(s) held on 1 key(s)",
        "2/5",  # tokens of the known limit
        "30.0 s",  # the other's backlog
        "proj.render",
        "[bold]7",  # user strings are text, never markup
        "x\\ny",  # non-printable characters escaped
        "tid-1:ab",
        "o1 (1.5 s), o2 (30.0 s)",
        "open",
        "sms",
        "concurrency",
        "1 handed back, not yet arrived",
        "users",
        "1/2 (pool-a)",
        "pool-a",
    ):
        assert expected in text, expected


def test_no_column_is_squeezed_out_of_an_80_column_terminal() -> None:
    text = rendered(render_status(full_status(), "r", limit=10), width=80)
    for name in ("api", "mail", "tid-1:ab", "partner", "geo", "maps", "sms", "users", "pool-a"):
        assert name in text, name
    assert "25.0 s" in text  # the locks' last column
    assert max(len(line) for line in text.splitlines()) <= 80


def test_the_tables_say_what_they_leave_out() -> None:
    many = tuple(LockHolder("lock", f"job{i}", None, "o", 10.0, age=float(i)) for i in range(15))
    text = rendered(render_status(full_status(locks=many), "r", limit=3))
    assert "12 more not shown (--limit 0 shows all)" in text
    assert "job14" in text  # the oldest first
    assert "job0 " not in text
    everything = rendered(render_status(full_status(locks=many), "r", limit=0))
    assert "job0 " in everything
    assert "more not shown" not in everything


def test_empty_kinds_get_no_table() -> None:
    text = rendered(render_status(Status(prefix="tg", server_time=0.0, elapsed=0.0), "r", 10))
    assert "0 rate-limit bucket(s) · 0 lock(s) held" in text
    assert "Rate limits" not in text
    assert "Locks held" not in text


def test_the_app_guards_table() -> None:
    text = rendered(render_tasks({"proj.send": (RateLimit("10/s"),)}, limit=10))
    assert "proj.send" in text
    assert "RateLimit('10/s')" in text


# ---------------------------------------------------------------- the command's wiring


@pytest.fixture
def read(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Replace the reader: each call records (prefix, limits) and returns full_status()."""
    calls: list[Any] = []

    def fake(source: Any, *, limits: Any = ()) -> Status:
        calls.append((source.keys.prefix, list(limits)))
        return full_status(prefix=source.keys.prefix)

    monkeypatch.setattr("taskguard.status.read_status", fake)
    return calls


def test_status_prints_json_of_every_prefix(read: list[Any]) -> None:
    args = ["status", "--redis-url", "redis://:secret@h:1/0", "--prefix", "a", "--prefix", "b"]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["redis"] == "redis://:***@h:1/0"
    assert [p["prefix"] for p in doc["prefixes"]] == ["a", "b"]
    assert doc["prefixes"][0]["locks"][0]["owner"] == "tid-1:ab"
    assert doc["tasks"] == {}
    assert read == [("a", []), ("b", [])]


def test_status_prints_tables(read: list[Any]) -> None:
    result = CliRunner().invoke(cli, ["status", "--redis-url", "redis://h:1/0"])
    assert result.exit_code == 0, result.output
    assert "Locks held" in result.output
    assert read[0][0] == "tg"


@pytest.mark.parametrize("as_json", [True, False])
def test_watch_refreshes_until_interrupted(
    read: list[Any], monkeypatch: pytest.MonkeyPatch, as_json: bool
) -> None:
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(STATUS_MODULE, "_sleep", sleep)
    args = ["status", "--redis-url", "redis://h:1/0", "--watch", "0.5"]
    result = CliRunner().invoke(cli, args + (["--json"] if as_json else []))
    assert result.exit_code == 0, result.output
    assert pauses == [0.5, 0.5, 0.5]
    assert len(read) == 3
    if as_json:
        assert [
            json.loads(line)["prefixes"][0]["prefix"] for line in result.output.splitlines()
        ] == ["tg"] * 3


def test_a_bare_watch_refreshes_every_two_seconds(
    read: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        raise KeyboardInterrupt

    monkeypatch.setattr(STATUS_MODULE, "_sleep", sleep)
    result = CliRunner().invoke(
        cli, ["status", "--redis-url", "redis://h:1/0", "--json", "--watch"]
    )
    assert result.exit_code == 0, result.output
    assert pauses == [2.0]


def test_an_outage_is_an_error_once_and_a_line_under_watch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def down(source: Any, *, limits: Any = ()) -> Status:
        raise BackendUnavailable("redis unreachable during status read: refused")

    monkeypatch.setattr("taskguard.status.read_status", down)
    once = CliRunner().invoke(cli, ["status", "--redis-url", "redis://h:1/0", "--json"])
    assert once.exit_code == 1
    assert "cannot read the status from redis://h:1/0: redis unreachable" in once.output

    def sleep(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(STATUS_MODULE, "_sleep", sleep)
    watched = CliRunner().invoke(
        cli, ["status", "--redis-url", "redis://h:1/0", "--json", "--watch"]
    )
    assert watched.exit_code == 0
    assert json.loads(watched.output)["error"].startswith("redis unreachable")


@pytest.mark.parametrize("command", [["status"], ["lock", "release", "x", "--force"]])
def test_the_commands_need_a_redis_url(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--redis-url", "memory://"])
    assert result.exit_code == 2
    assert "must be a redis://, rediss://, unix://, redis+cluster:// or" in result.output
    bad = CliRunner().invoke(cli, [*command, "--redis-url", "http://h/"])
    assert bad.exit_code == 2
    assert "unsupported backend URL" in bad.output


def test_a_bad_prefix_names_the_option() -> None:
    result = CliRunner().invoke(cli, ["status", "--redis-url", "redis://h:1/0", "--prefix", "a b"])
    assert result.exit_code == 2
    assert "--prefix" in result.output


def test_the_admin_commands_are_listed() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    for command in ("status", "lock", "breaker"):
        assert command in result.output
    breaker = CliRunner().invoke(cli, ["breaker", "--help"])
    for action in ("open", "close", "reset"):
        assert action in breaker.output


@pytest.mark.usefixtures("isolated")
def test_under_celery_the_app_gives_its_redis_prefix_and_limits(
    read: list[Any], memory: taskguard.MemoryBackend
) -> None:
    config = {"redis_url": "redis://app-host:6379/3", "key_prefix": "appx"}
    with celery_app(memory, **config) as app:

        @app.task(base=GuardedTask, guards=[RateLimit("10/s", burst=4)], name="proj.send")
        def send() -> None: ...

        @app.task(base=GuardedTask, guards=[Lock(key="{doc}")], name="proj.render")
        def render(doc: str) -> None: ...

        result = CliRunner().invoke(cli, ["status", "--json"], obj=SimpleNamespace(app=app))
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["redis"] == "redis://app-host:6379/3"
    assert doc["tasks"]["proj.send"] == ["RateLimit('10/s', burst=4, name='proj.send')"]
    assert "proj.render" in doc["tasks"]
    [(prefix, limits)] = read
    assert prefix == "appx"
    assert [(limit.name, limit.burst) for limit in limits] == [("proj.send", 4)]


def test_without_an_app_no_guards_are_configured(read: list[Any]) -> None:
    result = CliRunner().invoke(cli, ["status", "--redis-url", "redis://h:1/0", "--json"], obj=None)
    assert json.loads(result.output)["tasks"] == {}


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["status", "--json"],
        ["lock", "release", "report"],
        ["lock", "release", "report", "--force"],
        ["breaker", "open", "geo"],
    ],
)
def test_an_unreachable_redis_is_a_one_line_error(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--redis-url", DEAD_URL])
    assert result.exit_code == 1, result.output
    assert "redis unreachable" in result.output
    assert "Traceback" not in result.output


def test_an_outage_under_watch_shows_on_the_screen(monkeypatch: pytest.MonkeyPatch) -> None:
    def once(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(STATUS_MODULE, "_sleep", once)
    result = CliRunner().invoke(cli, ["status", "--redis-url", DEAD_URL, "--watch"])
    assert result.exit_code == 0, result.output
    assert "cannot read the status from redis://127.0.0.1:1/0" in result.output
