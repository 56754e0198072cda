"""Counting what a Redis server runs, as the server sees it.

``INFO commandstats`` counts every command, including those a Lua script runs inside one
EVALSHA, and cannot tell them apart. ``MONITOR`` can (it tags script commands ``lua``), so
:func:`counting` uses both: MONITOR for the round trips clients sent and the commands
scripts ran inside them, commandstats for a cross-check. MONITOR slows the server down
(every command is copied to the monitor), so server *time* comes from
:func:`server_usec_per_call`, which does without it.

A round trip is one command a client sent and waited for, except that a transaction
(``MULTI`` ... ``EXEC``, which redis-py's transactional pipelines send in one write and
read back in one go) is one round trip however many commands it holds. MONITOR shows those
commands one by one, so :class:`Counted` counts them (``batched``) and leaves them out of
:attr:`Counted.round_trips`. The suite's own clients send no other pipelines.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis

__all__ = [
    "CommandStat",
    "Counted",
    "command_stats",
    "commands_between",
    "counting",
    "server_usec_per_call",
    "server_usec_sent",
]


@dataclass(frozen=True)
class CommandStat:
    """How often the server ran one command, and for how long in total.

    Attributes:
        calls: Calls, including those the server rejected before running them (they are
            round trips too); failed ones (``NOSCRIPT``...) are already counted.
        usec: Server time spent in the command, in microseconds.
    """

    calls: int
    usec: int

    def __sub__(self, other: CommandStat) -> CommandStat:
        return CommandStat(self.calls - other.calls, self.usec - other.usec)


def command_stats(client: redis.Redis) -> dict[str, CommandStat]:
    """The server's ``INFO commandstats``, by lower-case command name."""
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): CommandStat(
            int(value["calls"]) + int(value.get("rejected_calls", 0)), int(value["usec"])
        )
        for name, value in stats.items()
        if isinstance(value, dict)
    }


def commands_between(
    before: dict[str, CommandStat], after: dict[str, CommandStat]
) -> dict[str, CommandStat]:
    """Commands the server ran between two :func:`command_stats` snapshots.

    The first snapshot's own ``INFO`` is counted in the second, so ``info`` is left out:
    the benchmarks send it for nothing else.
    """
    zero = CommandStat(0, 0)
    diff = {name: stat - before.get(name, zero) for name, stat in sorted(after.items())}
    return {name: stat for name, stat in diff.items() if stat.calls and name != "info"}


@dataclass
class Counted:
    """What a server ran during a :func:`counting` block.

    Attributes:
        sent: Commands clients sent, by name (from MONITOR).
        scripted: Commands Lua scripts ran inside those round trips (from MONITOR).
        stats: Every command by name, with server time (``INFO commandstats``).
        batched: Commands of :attr:`sent` that travelled in one write with the ``MULTI``
            before them (the rest of a transaction, up to and including its ``EXEC``).
    """

    sent: Counter[str] = field(default_factory=Counter)
    scripted: Counter[str] = field(default_factory=Counter)
    stats: dict[str, CommandStat] = field(default_factory=dict)
    #: Round trips of the ``background`` scripts :func:`counting` was given (by script
    #: name), left out of :attr:`sent` and their commands out of :attr:`scripted`.
    background: Counter[str] = field(default_factory=Counter)
    batched: int = 0

    @property
    def round_trips(self) -> int:
        """Commands sent, counting a whole ``MULTI`` ... ``EXEC`` transaction as one."""
        return sum(self.sent.values()) - self.batched

    def without(self, other: Counted, times: float) -> Counted:
        """These counts less ``times`` x ``other``'s: a warm-up less its tasks' share."""

        def less(mine: Counter[str], theirs: Counter[str]) -> Counter[str]:
            left = Counter({name: round(n - times * theirs[name]) for name, n in mine.items()})
            return +left  # drops what is zero or below

        return Counted(
            less(self.sent, other.sent),
            less(self.scripted, other.scripted),
            batched=max(round(self.batched - times * other.batched), 0),
        )

    def describe(self, per: int) -> str:
        """``"1 EVALSHA (inside: 1 GET, 1 SET)"``, per ``per`` operations."""

        def listed(counts: Counter[str]) -> str:
            return ", ".join(f"{n / per:g} {name.upper()}" for name, n in sorted(counts.items()))

        text = listed(self.sent) or "none"
        return f"{text} (inside: {listed(self.scripted)})" if self.scripted else text


class _Monitor:
    """A thread reading ``MONITOR`` until it sees its own end marker."""

    def __init__(self, url: str, background: Mapping[str, str] | None = None) -> None:
        self.sent: Counter[str] = Counter()
        self.scripted: Counter[str] = Counter()
        self.background: Counter[str] = Counter()
        self._background = dict(background or {})  # sha -> script name
        self._in_background = False  # the commands of a background script, until the next
        self.batched = 0
        self._in_multi: set[str] = set()  # clients between MULTI and EXEC
        self._marker = f"tgbench-monitor-end-{uuid.uuid4().hex}"
        # Connected before MONITOR starts, so its handshake is not counted.
        self._marker_client = redis.Redis.from_url(url)
        self._marker_client.ping()
        self._monitor = redis.Redis.from_url(url).monitor()  # type: ignore[no-untyped-call]
        self._monitor.__enter__()  # MONITOR is on once this returns
        self._thread = threading.Thread(target=self._read, name="tgbench-monitor", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            entry = self._monitor.next_command()
            command: str = entry["command"]
            if self._marker in command:
                return
            name = command.split(" ", 1)[0].lower()
            if entry["client_type"] == "lua":
                if not self._in_background:  # a script's commands follow its EVALSHA
                    self.scripted[name] += 1
                continue
            self._in_background = False
            if name == "evalsha" and self._background:
                script = self._background.get(command.split(" ", 2)[1].strip('"'))
                if script is not None:
                    self.background[script] += 1
                    self._in_background = True
                    continue
            if name != "info":  # the snapshots of INFO commandstats
                self.sent[name] += 1
                self._transaction(f"{entry['client_address']}:{entry['client_port']}", name)

    def _transaction(self, client: str, name: str) -> None:
        if name == "multi":
            self._in_multi.add(client)
        elif client in self._in_multi:
            self.batched += 1
            if name in ("exec", "discard"):
                self._in_multi.discard(client)

    def stop(self) -> None:
        """Flush: everything sent before the end marker has been read when this returns."""
        self._marker_client.echo(self._marker)
        self._marker_client.close()
        self._thread.join(30)
        self._monitor.__exit__()
        if self._thread.is_alive():
            raise RuntimeError("MONITOR reader did not see its end marker within 30 s")


@contextmanager
def counting(url: str, background: Mapping[str, str] | None = None) -> Iterator[Counted]:
    """Count what the server at ``url`` runs inside the block (filled in on exit).

    ``background`` maps the SHA of scripts a worker runs on a timer, not per task (the
    parking sweeper's), to a name: their round trips go to :attr:`Counted.background`.
    Only meaningful on a server nothing else talks to meanwhile.
    """
    admin = redis.Redis.from_url(url)
    admin.ping()  # connected before MONITOR starts, so its handshake is not counted
    monitor = _Monitor(url, background)
    counted = Counted()
    before = command_stats(admin)
    try:
        yield counted
    finally:
        after = command_stats(admin)
        monitor.stop()
        admin.close()
        counted.sent, counted.scripted = monitor.sent, monitor.scripted
        counted.background = monitor.background
        counted.batched = monitor.batched
        counted.stats = commands_between(before, after)


def server_usec_per_call(url: str, call: Callable[[], object], calls: int, command: str) -> float:
    """Server time per ``call()``, in microseconds, spent in ``command``.

    Read from ``INFO commandstats`` alone. A script's time includes the commands it runs.
    """
    admin = redis.Redis.from_url(url)
    admin.ping()
    before = command_stats(admin)
    for _ in range(calls):
        call()
    ran = commands_between(before, command_stats(admin))
    admin.close()
    return ran[command].usec / calls if command in ran else 0.0


def server_usec_sent(url: str, call: Callable[[], object], calls: int, counted: Counted) -> float:
    """Server time per ``call()``, in microseconds, in the commands clients sent.

    ``counted`` is a :func:`counting` of the same call: it says which commands the client
    sent and which ran inside scripts. A script's time already includes the commands it
    runs, so those are left out; where a name is both sent and scripted (a client ``GET``
    and a script's ``GET``), its time is shared out by call counts.
    """
    admin = redis.Redis.from_url(url)
    admin.ping()
    before = command_stats(admin)
    for _ in range(calls):
        call()
    ran = commands_between(before, command_stats(admin))
    admin.close()
    total = 0.0
    for name, stat in ran.items():
        sent, scripted = counted.sent[name], counted.scripted[name]
        if sent:
            total += stat.usec * sent / (sent + scripted)
    return total / calls
