"""``taskguard status`` on a screen: :class:`~taskguard.status.Status` as rich tables.

Only rendering: the data is :func:`taskguard.status.read_status`'s, the same the ``--json``
output prints. Each table shows its most telling rows first (the fullest buckets, the
oldest locks, open breakers, the longest queues), at most ``limit`` of them. Every user
string is shown as plain text (never rich markup), with non-printable characters escaped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

from rich.console import Group, RenderableType
from rich.table import Column, Table
from rich.text import Text

from taskguard.status import Status

__all__ = ["render_status", "render_tasks"]

T = TypeVar("T")

_STATE_STYLE = {"open": "bold red", "forced_open": "bold red", "half_open": "yellow"}
_STATE_STYLE |= {"disabled": "magenta", "closed": "green"}


def _plain(value: object) -> str:
    text = "-" if value is None else str(value)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _cell(value: object, style: str = "") -> Text:
    return Text(_plain(value), style=style)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 60:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s" if value >= 1 else f"{value * 1000:.0f} ms"


def _fold(header: str) -> Column:
    """A column of user strings (names, keys, owners): folded, never cut, and never
    squeezed out by the numbers beside it."""
    return Column(header, overflow="fold", min_width=max(*map(len, header.split()), 6))


def _table(
    title: str,
    headers: Sequence[str | Column],
    rows: Sequence[T],
    cells: Callable[[T], Sequence[Any]],
    limit: int,
    *,
    note: str = "",
) -> RenderableType:
    """A titled table of at most ``limit`` rows (0: all), then a dim line of notes."""
    shown = rows if limit <= 0 else rows[:limit]
    notes = [note] if note else []
    if len(shown) < len(rows):
        notes.insert(0, f"{len(rows) - len(shown)} more not shown (--limit 0 shows all)")
    # Figures wrap at spaces (a header) before user strings fold.
    columns = [
        h if isinstance(h, Column) else Column(h, min_width=max(map(len, h.split())))
        for h in headers
    ]
    table = Table(*columns, title=title, title_justify="left", title_style="bold")
    for row in shown:
        table.add_row(*(c if isinstance(c, Text) else _cell(c) for c in cells(row)))
    if not notes:
        return table
    return Group(table, Text(" · ".join(notes), style="dim"))


def _summary(status: Status, where: str) -> Text:
    clock = datetime.fromtimestamp(status.server_time, tz=timezone.utc).strftime("%H:%M:%S")
    holders = sum(len(s.holders) for s in status.slots)
    not_closed = sum(b.state != "closed" for b in status.breakers)
    parked = sum(lot.tasks for lot in status.parked.lots)
    backlog = sum(ns.backlog for ns in status.write_behind)
    line = Text()
    line.append(f"prefix {_plain(status.prefix)}", style="bold")
    line.append(
        f" on {_plain(where)} · {clock} UTC (server) · read in {_seconds(status.elapsed)}\n"
    )
    line.append(
        f"{len(status.rate_limits)} rate-limit bucket(s) · {len(status.locks)} lock(s) held · "
        f"{holders} slot(s) held on {len(status.slots)} key(s) · "
        f"{len(status.breakers)} breaker(s), {not_closed} not closed · "
        f"{len(status.quotas)} quota(s) · {parked} task(s) parked, "
        f"{status.parked.in_flight} handed back · write-behind backlog {backlog} in "
        f"{len(status.write_behind)} namespace(s) · {len(status.drain_pools)} drain pool(s)"
    )
    return line


def _rate_limits(status: Status, limit: int) -> RenderableType:
    note = "backlog: seconds until the bucket is full again"
    if any(b.tokens is None for b in status.rate_limits):
        note += (
            ". Redis keeps a bucket's TAT, not its rate: tokens show for the limits whose "
            "rate is known (under `celery -A app taskguard status`, the app's)"
        )
    rows = sorted(status.rate_limits, key=lambda b: -b.backlog)
    return _table(
        "Rate limits",
        [_fold("name"), _fold("key"), "tokens now", "backlog"],
        rows,
        lambda b: [
            b.name,
            b.key,
            "-" if b.tokens is None else f"{b.tokens}/{b.burst}",
            _seconds(b.backlog),
        ],
        limit,
        note=note,
    )


def _locks(status: Status, limit: int) -> RenderableType:
    rows = sorted(status.locks, key=lambda h: (h.age is None, -(h.age or 0.0)))
    return _table(
        "Locks held (oldest first)",
        [
            "kind",
            _fold("name"),
            _fold("key"),
            _fold("owner"),
            "age",
            _fold("fencing token"),
            "lease left",
        ],
        rows,
        lambda h: [
            h.kind,
            h.name,
            h.key,
            h.owner,
            _seconds(h.age),
            h.fencing_token,
            _seconds(h.lease_left),
        ],
        limit,
        note="age is read from the fencing token; lease left is renewed by the holder's heartbeat",
    )


def _slots(status: Status, limit: int) -> RenderableType:
    def holders(s: Any) -> str:
        shown = [f"{_plain(h.owner)} ({_seconds(h.lease_left)})" for h in s.holders[:3]]
        more = len(s.holders) - len(shown)
        return ", ".join(shown) + (f", +{more}" if more > 0 else "")

    rows = sorted(status.slots, key=lambda s: -len(s.holders))
    return _table(
        "Concurrency slots",
        [_fold("name"), _fold("key"), "held", _fold("holders (lease left)")],
        rows,
        lambda s: [s.name, s.key, len(s.holders), holders(s)],
        limit,
        note="the cap itself is set in code, not stored in Redis",
    )


def _breakers(status: Status, limit: int) -> RenderableType:
    def state(b: Any) -> Text:
        repeated = f" (x{b.opens})" if b.opens > 1 and b.state != "closed" else ""
        return _cell(b.state + repeated, _STATE_STYLE.get(b.state, ""))

    def window(b: Any) -> str:
        return f"{b.window} {b.calls}/{b.failures}/{b.slow_calls}" if b.window else "-"

    rows = sorted(status.breakers, key=lambda b: (b.state == "closed", b.name))
    return _table(
        "Circuit breakers",
        [_fold("name"), "state", "open for", "window calls/failed/slow", "in a row", "probes"],
        rows,
        lambda b: [
            b.name,
            state(b),
            _seconds(b.open_left),
            window(b),
            b.consecutive_failures,
            b.probes,
        ],
        limit,
        note="(xN): opened N times in a row, open longer each time"
        if any(b.opens > 1 and b.state != "closed" for b in rows)
        else "",
    )


def _quotas(status: Status, limit: int) -> RenderableType:
    rows = sorted(status.quotas, key=lambda q: -q.used)
    return _table(
        "Calendar quotas",
        [_fold("name"), _fold("key"), "used", "resets in"],
        rows,
        lambda q: [q.name, q.key, q.used, _seconds(q.resets_in)],
        limit,
        note="the quota's limit is set in code, not stored in Redis",
    )


def _parked(status: Status, limit: int) -> RenderableType:
    rows = sorted(status.parked.lots, key=lambda lot: -lot.tasks)
    kinds = {"slots": "concurrency", "lock": "lock"}
    return _table(
        "Parked tasks",
        ["guard", _fold("name"), _fold("key"), "tasks"],
        rows,
        lambda lot: [kinds.get(lot.kind, lot.kind), lot.name, lot.key, lot.tasks],
        limit,
        note=f"{status.parked.in_flight} handed back, not yet arrived",
    )


def _write_behind(status: Status, limit: int) -> RenderableType:
    def leases(ns: Any) -> str:
        owners = sorted({_plain(lease.owner) for lease in ns.leases})
        return f"{len(ns.leases)}/{ns.partitions}" + (f" ({', '.join(owners)})" if owners else "")

    rows = sorted(status.write_behind, key=lambda ns: -ns.backlog)
    return _table(
        "Write-behind",
        [
            _fold("namespace"),
            "backlog",
            "oldest",
            "pending",
            "dead letters",
            _fold("partitions leased"),
        ],
        rows,
        lambda ns: [
            ns.name,
            ns.backlog,
            _seconds(ns.oldest_age),
            ns.pending,
            _cell(ns.dead_letters, "bold red" if ns.dead_letters else ""),
            leases(ns),
        ],
        limit,
    )


def _drain_pools(status: Status, limit: int) -> RenderableType:
    return _table(
        "Drain pools",
        [_fold("pool"), "registration expires in"],
        status.drain_pools,
        lambda pool: [pool.name, _seconds(pool.expires_in)],
        limit,
    )


_SECTIONS: list[tuple[Callable[[Status], object], Callable[[Status, int], RenderableType]]] = [
    (lambda s: s.rate_limits, _rate_limits),
    (lambda s: s.locks, _locks),
    (lambda s: s.slots, _slots),
    (lambda s: s.breakers, _breakers),
    (lambda s: s.quotas, _quotas),
    (lambda s: s.parked.lots or s.parked.in_flight, _parked),
    (lambda s: s.write_behind, _write_behind),
    (lambda s: s.drain_pools, _drain_pools),
]


def render_status(status: Status, where: str, limit: int) -> RenderableType:
    """One prefix's status: a summary line, then a table per kind of state held."""
    parts: list[RenderableType] = [_summary(status, where)]
    parts += [render(status, limit) for present, render in _SECTIONS if present(status)]
    return Group(*parts)


def render_tasks(guards: Mapping[str, Sequence[Any]], limit: int) -> RenderableType:
    """The app's guarded tasks and their effective guards."""
    return _table(
        "Guarded tasks (the app's settings)",
        [_fold("task"), _fold("guards")],
        sorted(guards.items()),
        lambda item: [item[0], "\n".join(repr(g) for g in item[1]) or "-"],
        limit,
    )
