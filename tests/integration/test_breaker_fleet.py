"""Circuit breakers shared by a fleet of real workers, in front of a real HTTP stub."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from celery.result import AsyncResult

import taskguard
from taskguard.testing import wait_until

from .conftest import Fleet

APP = "tests.integration.apps.breakers"


class Stub:
    """A local HTTP service whose health the test switches; it logs every call it gets."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.calls: list[tuple[float, str]] = []
        self.callers: list[tuple[float, str]] = []  # (time, task id) of calls naming one
        self.release = threading.Event()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                now = time.time()
                stub.calls.append((now, path))
                if query.startswith("task="):
                    stub.callers.append((now, query.removeprefix("task=")))
                if path == "/hang":
                    stub.release.wait(60)
                elif stub.mode == "slow":
                    time.sleep(0.3)  # a slow partner: the slowness is what trips cb-slow
                code = 500 if stub.mode == "fail" and path != "/hang" else 200
                self.send_response(code)
                self.end_headers()
                self.wfile.write(b"ok" if code == 200 else b"down")

            def log_message(self, *args: object) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def callers_between(self, start: float, end: float) -> set[str]:
        """The task ids that called between ``start`` and ``end``."""
        return {task for t, task in self.callers if start < t < end}

    def calls_between(self, start: float, end: float) -> int:
        return sum(1 for t, path in self.calls if start < t < end and path != "/hang")

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[Stub]:
    server = Stub()
    yield server
    server.close()


@pytest.fixture(scope="module")
def fleet(fleet_factory: Callable[..., Fleet]) -> Fleet:
    return fleet_factory(app=APP).start(count=3, concurrency=2)


def transitions(fleet: Fleet, name: str) -> list[dict]:
    return [r for r in fleet.records("transitions") if r["name"] == name]


def wait_transitions(fleet: Fleet, name: str, count: int, timeout: float = 30) -> list[dict]:
    return fleet.wait_for(
        "transitions", lambda recs: len([r for r in recs if r["name"] == name]) >= count, timeout
    )[: 10**6]


def settle(results: list[AsyncResult]) -> None:
    for result in results:
        # Failures are the point here; states are checked by the caller.
        result.get(timeout=60, propagate=False)


@pytest.mark.both_brokers
def test_fleet_wide_trip_probes_and_recovery(fleet: Fleet, stub: Stub) -> None:
    settle([fleet.send("call_partner", stub.url) for _ in range(2)])
    stub.mode = "fail"
    # Some of these reach the failing stub (and fail); the ones still queued when the
    # breaker trips are deferred like any other.
    failing = [fleet.send("call_partner", stub.url) for _ in range(8)]
    [trip] = wait_transitions(fleet, "cb-trip", 1)[:1]
    assert (trip["old"], trip["new"]) == ("closed", "open")

    # Queued while open: deferred; the stub hears nothing from any worker until open_for.
    queued = [fleet.send("call_partner", stub.url) for _ in range(10)]
    # Half-open with the stub still down: at most 2 probes, fleet-wide, then open again.
    records = wait_transitions(fleet, "cb-trip", 3)
    half, reopen = records[1], records[2]
    # While open, nothing is admitted: no task published after the trip calls the stub
    # before half-open. A call admitted before the trip may still be in flight (a loaded
    # machine can stall a worker between admission and its request), so the earlier
    # batch is only held to not calling again until half-open.
    during_open = stub.callers_between(trip["t"], half["t"] - 0.05)
    assert during_open.isdisjoint(r.id for r in queued)
    assert during_open <= {r.id for r in failing}
    assert stub.calls_between(trip["t"] + 0.5, half["t"] - 0.05) <= len(during_open)
    assert (half["old"], half["new"]) == ("open", "half_open")
    assert (reopen["old"], reopen["new"]) == ("half_open", "open")
    assert stub.calls_between(half["t"] - 0.1, reopen["t"] + 0.1) <= 2
    # Queued during the second (4 s) open period, while the partner recovers.
    stub.mode = "ok"
    later = [fleet.send("call_partner", stub.url) for _ in range(10)]

    # Deferral, not failure: every task queued while the partner recovered succeeds...
    assert [r.get(timeout=60) for r in later] == ["ok"] * 10
    # ...and none reached it before the 4 s were up (they ran after, so that is past).
    assert stub.calls_between(reopen["t"] + 0.2, reopen["t"] + 3.5) == 0
    # ...and of those queued earlier, only the probes sent to the still-failing partner
    # failed (with its error; the breaker itself failed none).
    settle(queued + failing)
    assert len([r for r in queued if r.state == "FAILURE"]) <= 2
    assert {r.state for r in queued + failing} <= {"SUCCESS", "FAILURE"}
    final = transitions(fleet, "cb-trip")
    assert (final[-1]["old"], final[-1]["new"]) == ("half_open", "closed")
    assert final[-1]["t"] - reopen["t"] >= 4 - 0.2  # open_for grew from 2 s to 4 s
    runs = [r for r in fleet.records("runs") if r["id"] in {q.id for q in later}]
    assert {r["retries"] for r in runs} == {0}
    assert all(r["deferrals"] >= 1 for r in runs)


def test_slow_calls_alone_trip_it(fleet: Fleet, stub: Stub) -> None:
    stub.mode = "slow"
    results = [fleet.send("call_partner_slow", stub.url) for _ in range(6)]
    [trip] = wait_transitions(fleet, "cb-slow", 1)[:1]
    assert (trip["old"], trip["new"]) == ("closed", "open")
    stub.mode = "ok"
    succeeded = [r for r in results if r.ready() and r.successful()]
    assert len(succeeded) >= 4  # the slow calls themselves succeeded


def test_ignored_exceptions_do_not_count(fleet: Fleet, stub: Stub) -> None:
    stub.mode = "fail"
    settle([fleet.send("call_partner_filtered", stub.url, True) for _ in range(6)])
    assert transitions(fleet, "cb-filter") == []  # 6 ignored failures: still closed
    settle([fleet.send("call_partner_filtered", stub.url, False) for _ in range(2)])
    [trip] = wait_transitions(fleet, "cb-filter", 1)[:1]
    assert (trip["old"], trip["new"]) == ("closed", "open")  # 2 recorded ones trip it


def test_crashed_probe_frees_its_permit(fleet_factory: Callable[..., Fleet], stub: Stub) -> None:
    crash = fleet_factory(app=APP).start(count=2, concurrency=1)
    stub.mode = "fail"
    settle([crash.send("call_partner_crashable", stub.url)])
    wait_transitions(crash, "cb-crash", 1)
    # The fleet's breaker, as the workers configure it (apps/breakers.py), read from Redis.
    shared = taskguard.connect(crash.guard_url, prefix=crash.prefix).circuit_breaker(
        "cb-crash", consecutive_failures=1, open_for=1, probe_ttl=3
    )
    # open_for passes: the next call is the half-open probe.
    wait_until(lambda: shared.state == "half_open", timeout=10)
    shared.backend.close()
    crash.send("call_partner_crashable", f"{stub.url}/hang")
    [probe_run] = crash.wait_for("runs", lambda recs: len(recs) >= 2, timeout=30)[1:2]
    crash.worker_of(probe_run["worker"]).kill()  # the probe dies holding its permit
    killed = time.time()
    stub.mode = "ok"
    after = crash.send("call_partner_crashable", stub.url)
    assert after.get(timeout=30) == "ok"
    started = next(t for t, path in stub.calls if path == "/" and t > killed)
    assert started - killed <= 3 + 2  # probe_ttl, plus the denied task's retry interval
