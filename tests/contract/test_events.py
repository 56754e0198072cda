"""Guard events on both backends, and on Redis across processes and through the CLI:
a subscriber here receives what another process publishes; ``taskguard events`` tails the
channel; the admin commands publish their audit events."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import taskguard
from taskguard import events
from taskguard.cli import taskguard as cli
from taskguard.drain import DrainPool
from taskguard.errors import StoreError
from taskguard.events import Event, publish_event
from taskguard.sinks.base import Record
from taskguard.testing import RedisServer, wait_until
from tests.unit.test_cache_fakes import MemoryStore

from .harness import REDIS_ONLY, Contract

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(contract: Contract) -> taskguard.Client:
    return taskguard.connect(contract.backend)


def test_a_subscriber_receives_what_is_published(client: taskguard.Client) -> None:
    with client.events(timeout=2) as stream:
        assert publish_event(client, "limit_changed", name="api", action="set", rate="10/s")
        event = stream.get(timeout=5)
    assert event is not None
    assert (event.type, event.prefix, event.host) == (
        "limit_changed",
        client.keys.prefix,
        socket.gethostname(),
    )
    assert (event["name"], event["rate"], event["burst"]) == ("api", "10/s", None)


def test_events_of_an_installed_process_reach_a_subscriber(client: taskguard.Client) -> None:
    events.install(client)
    try:
        with client.events(timeout=2) as stream:
            breaker = client.circuit_breaker("geo", consecutive_failures=1, open_for=60)
            with contextlib.suppress(ConnectionError):
                breaker.call(_refused)
            event = stream.get(timeout=5)
    finally:
        events.uninstall()
    assert event is not None
    assert (event.type, event["name"], event["old"], event["new"]) == (
        "circuit_state_changed",
        "geo",
        "closed",
        "open",
    )


def _refused() -> None:
    raise ConnectionError("refused")


class PoisonStore(MemoryStore):
    """Refuses key ``bad`` for good: the drain dead-letters it."""

    def write(self, namespace: str, records: Sequence[Record]) -> None:
        if any(record.key == "bad" for record in records):
            raise StoreError("key 'bad' refused", transient=False)
        super().write(namespace, records)


@REDIS_ONLY
def test_a_drain_pool_publishes_its_dead_letters(client: taskguard.Client) -> None:
    store = PoisonStore()
    cache = client.cache("orders", ttl=60, strategy="write-behind", store=store, partitions=1)
    cache.set("good", 1)
    cache.set("bad", 2)
    events.install(client)
    try:
        with client.events(types=["dead_lettered"], timeout=2) as stream:
            with DrainPool(client, store, namespaces=["orders"]) as pool:
                assert pool.wait_idle(timeout=20)
            event = stream.get(timeout=5)
    finally:
        events.uninstall()
    assert event is not None
    assert (event["namespace"], event["keys"], event["attempts"]) == ("orders", ["bad"], 1)
    assert "key 'bad' refused" in event["error"]


# ---------------------------------------------------------------- another process

TRIP_A_BREAKER = """
import os, taskguard
from taskguard import events

client = taskguard.connect()  # TASKGUARD_REDIS_URL, TASKGUARD_PREFIX
events.install(client)
breaker = client.circuit_breaker("partner", consecutive_failures=1, open_for=60)
try:
    breaker.call(lambda: 1 / 0)
except ZeroDivisionError:
    pass
"""


@REDIS_ONLY
def test_a_subscriber_receives_the_breaker_event_of_another_process(
    client: taskguard.Client, contract: Contract
) -> None:
    env = {
        **os.environ,
        "TASKGUARD_REDIS_URL": str(contract.url),
        "TASKGUARD_PREFIX": contract.prefix,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    with client.events(types=["circuit_state_changed"], timeout=10) as stream:
        child = subprocess.Popen([sys.executable, "-c", TRIP_A_BREAKER], env=env, cwd=ROOT)
        try:
            event = stream.get(timeout=30)
        finally:
            assert child.wait(30) == 0
    assert event is not None
    assert event.pid == child.pid
    assert (event["name"], event["new"], event["task_id"]) == ("partner", "open", None)


def test_a_stream_subscribes_again_after_redis_restarts(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = taskguard.connect(private_redis.url, prefix="tgt-restart")
    with client.events() as stream:
        private_redis.stop()  # longer than redis-py's own reconnection tries

        def noticed() -> bool:
            stream.get(timeout=0.05)
            return "events: lost the subscription" in caplog.text

        wait_until(noticed, timeout=15, message="the stream noticing the outage")
        private_redis.restart()  # the same port

        def delivered() -> Event | None:
            publish_event(client, "admin", action="breaker_reset", name="geo")
            return stream.get(timeout=0.1)

        event = wait_until(delivered, timeout=15, interval=0.05, message="an event after")
    client.close()
    assert (event.type, event["name"]) == ("admin", "geo")
    assert "events: lost the subscription to tgt-restart:events" in caplog.text
    assert "events: subscribed to tgt-restart:events again" in caplog.text


# ---------------------------------------------------------------- the CLI


def invoke(contract: Contract, *args: str) -> Any:
    assert contract.url is not None
    return CliRunner().invoke(
        cli, [*args, "--redis-url", contract.url, "--prefix", contract.prefix]
    )


@contextlib.contextmanager
def once_subscribed(contract: Contract, publish: Callable[[], None]) -> Iterator[None]:
    """Run ``publish`` in a thread as soon as one more client listens on the channel."""
    assert contract.client is not None
    redis_client = contract.client
    channel = contract.backend.keys.events()

    def listeners() -> int:
        return int(redis_client.pubsub_numsub(channel)[0][1])

    before = listeners()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            wait_until(lambda: listeners() > before, timeout=10, message="a subscriber")
            publish()
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield
    thread.join(10)
    assert not failed, failed


@REDIS_ONLY
def test_the_tail_prints_one_line_per_event(client: taskguard.Client, contract: Contract) -> None:
    def publish() -> None:
        publish_event(client, "admin", action="breaker_open", name="geo", user="ops")
        publish_event(client, "limit_changed", name="api", action="clear")

    with once_subscribed(contract, publish):
        result = invoke(contract, "events", "--count", "2", "--timeout", "10")
    assert result.exit_code == 0, result.output
    first, second = result.stdout.splitlines()
    assert " admin " in first
    assert first.endswith(" action=breaker_open name=geo user=ops")
    assert second.endswith(" action=clear")
    assert f"listening on {contract.prefix}:events" in result.stderr


@REDIS_ONLY
def test_the_tail_filters_by_type_and_prints_json(
    client: taskguard.Client, contract: Contract
) -> None:
    def publish() -> None:
        publish_event(client, "limit_changed", name="api", action="clear")
        publish_event(client, "admin", action="breaker_reset", name="geo")

    with once_subscribed(contract, publish):
        result = invoke(
            contract, "events", "--type", "admin", "--json", "--count", "1", "--timeout", "10"
        )
    assert result.exit_code == 0, result.output
    [line] = result.stdout.splitlines()
    doc = json.loads(line)
    assert (doc["type"], doc["action"], doc["prefix"]) == (
        "admin",
        "breaker_reset",
        contract.prefix,
    )
    assert doc["pid"] == os.getpid()


@REDIS_ONLY
def test_the_tail_exits_1_when_too_few_events_came(contract: Contract) -> None:
    result = invoke(contract, "events", "--count", "1", "--timeout", "0.2")
    assert result.exit_code == 1
    assert "0 of 1 event(s) came before the timeout" in result.output


@REDIS_ONLY
def test_admin_commands_publish_audit_events(client: taskguard.Client, contract: Contract) -> None:
    held = client.lock("report", ttl=30, renew=False).acquire(timeout=1)
    with client.events(types=["admin"], timeout=2) as stream:
        assert invoke(contract, "breaker", "open", "geo").exit_code == 0
        assert invoke(contract, "lock", "release", "report").exit_code == 1  # no --force
        assert invoke(contract, "lock", "release", "report", "--force").exit_code == 0
        audit = [stream.get(timeout=5), stream.get(timeout=5)]
        assert stream.get(timeout=0.2) is None  # nothing for the refused release
    opened, released = (event.to_dict() if event else {} for event in audit)
    user = getpass.getuser()
    assert {k: opened[k] for k in ("action", "name", "before", "after", "user", "key")} == {
        "action": "breaker_open",
        "name": "geo",
        "before": "closed",
        "after": "forced_open",
        "user": user,
        "key": None,
    }
    assert {k: released[k] for k in ("action", "name", "key", "owner", "fencing_token")} == {
        "action": "lock_release",
        "name": "report",
        "key": None,
        "owner": held.owner,
        "fencing_token": held.fencing_token,
    }
