"""The chaos suite's auditor: what every process saw, checked against taskguard's promises.

The chaos tests record what happened, from sources the faults do not touch: each task run
records its start and end (stamped with the TIME of a Redis server no fault reaches), the
fenced resource logs every write it was offered in its own order, and each write-behind
writer logs every ``set()`` that returned. The checks here read those histories and
return the violations they find, one readable line each; an empty list is a pass.

They know nothing of Redis, Celery or the faults, so ``test_auditor.py`` feeds them
hand-made histories, and each can be seen to fail on a history that breaks its rule.

Times are seconds on one clock (the recording server's). A holding that never recorded
its end ends when its worker was killed, or is still going (``math.inf``).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "Ack",
    "Admission",
    "FencedWrite",
    "Holding",
    "Kill",
    "Moment",
    "WorkerReport",
    "busiest",
    "cap_violations",
    "crashed_workers",
    "fencing_violations",
    "lost_to_wipes",
    "newest_acks",
    "overlapping_holders",
    "rate_violations",
    "slow_recoveries",
    "stale_reads",
    "taskguard_tracebacks",
    "unreported_losses",
    "writebehind_violations",
]


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class Holding:
    """A run that held a lease (a lock, or a concurrency slot) from ``start`` to ``end``.

    Attributes:
        holder: The run (its task id).
        key: What it held: the lock key, or the concurrency cap's name.
        start: When it started running (after admission).
        end: When it recorded its end; its worker's kill; ``math.inf`` if still running.
        token: The fencing token its lock handed out (0 for a slot).
        lost: Its run reported ``lease_lost`` (the lease expired or was taken over).
    """

    holder: str
    key: str
    start: float
    end: float = math.inf
    token: int = 0
    lost: bool = False


@dataclass(frozen=True)
class FencedWrite:
    """One write offered to the fenced resource, as the resource logged it.

    The resource accepts a write only with a token at least the last one it accepted for
    the key, as a fencing-aware store would.

    Attributes:
        seq: Its place in the resource's log (the resource's own order).
        key: The resource key (the lock key).
        holder: The run that wrote.
        token: The fencing token the run presented.
        accepted: The resource took the write.
    """

    seq: int
    key: str
    holder: str
    token: int
    accepted: bool


@dataclass(frozen=True)
class Kill:
    """A holder's worker was killed at ``at`` while it held ``key``."""

    at: float
    key: str


@dataclass(frozen=True)
class Moment:
    """A fault that wiped Redis's data (``FLUSHDB``), between ``before`` and ``after``."""

    before: float
    after: float


@dataclass(frozen=True)
class Admission:
    """A rate-limited run started at ``t``; its bucket was charged at ``charged`` (``t``,
    or earlier when a reservation paid for its slot)."""

    t: float
    charged: float


@dataclass(frozen=True)
class Ack:
    """A write-behind ``set()`` that returned: its writer called at ``started``, it
    returned at ``acked``. ``seq`` orders one key's writes (each key has one writer)."""

    key: str
    seq: int
    started: float
    acked: float


@dataclass(frozen=True)
class WorkerReport:
    """A worker process at the end of a test: its name, whether it runs, whether the test
    killed it, and its log."""

    name: str
    alive: bool
    killed: bool
    log: str


# ---------------------------------------------------------------- locks


def fencing_violations(writes: Iterable[FencedWrite]) -> list[str]:
    """The resource's accepted writes must come from one holder at a time, in token order.

    Per key, in the resource's order: once another holder's write was accepted, an earlier
    holder's write is never accepted again; each new holder presents a strictly larger
    token than the one before; a token is never accepted below one already accepted.
    """
    found: list[str] = []
    by_key: dict[str, list[FencedWrite]] = defaultdict(list)
    for write in writes:
        if write.accepted:
            by_key[write.key].append(write)
    for key, accepted in sorted(by_key.items()):
        accepted.sort(key=lambda w: w.seq)
        finished: dict[str, int] = {}  # holder -> its token, once another took over
        current: FencedWrite | None = None
        highest = -math.inf
        for write in accepted:
            if write.token < highest:
                found.append(
                    f"{key}: write #{write.seq} of {write.holder} accepted with token "
                    f"{write.token} below {highest:.0f}, accepted before"
                )
            highest = max(highest, write.token)
            if current is None or write.holder == current.holder:
                current = write
                continue
            if write.holder in finished:
                found.append(
                    f"{key}: {write.holder} (token {write.token}) wrote again at #{write.seq} "
                    f"after {current.holder} (token {current.token}) took over"
                )
            elif write.token <= current.token:
                found.append(
                    f"{key}: {write.holder} took over at #{write.seq} with token "
                    f"{write.token}, not above {current.holder}'s {current.token}"
                )
            finished[current.holder] = current.token
            current = write
    return found


def overlapping_holders(holdings: Iterable[Holding]) -> list[str]:
    """No two runs that kept their lease held the same key at the same moment.

    A run that reported ``lease_lost`` is left out: its lease ended when it was lost, and
    what it did after is for the fencing token to refuse (:func:`fencing_violations`).
    """
    return cap_violations(holdings, 1)


def unreported_losses(holdings: Iterable[Holding], moments: Iterable[Moment]) -> list[str]:
    """Every run holding a lease across a wipe of guard state reported ``lease_lost``."""
    found = []
    for moment in moments:
        for h in holdings:
            if h.start < moment.before and h.end > moment.after and not h.lost:
                found.append(
                    f"{h.key}: {h.holder} held its lease across the wipe at "
                    f"{moment.before:.3f} ({h.start:.3f}..{h.end:.3f}) without lease_lost"
                )
    return found


def slow_recoveries(
    kills: Iterable[Kill], holdings: Sequence[Holding], *, ttl: float, grace: float = 1.0
) -> list[str]:
    """After a holder's worker is killed, the next run takes its key within ttl + grace."""
    found = []
    for kill in kills:
        later = [h.start for h in holdings if h.key == kill.key and h.start > kill.at]
        if not later:
            found.append(f"{kill.key}: no run held it after the kill at {kill.at:.3f}")
            continue
        waited = min(later) - kill.at
        if waited > ttl + grace:
            found.append(
                f"{kill.key}: the next holder started {waited:.2f}s after the kill at "
                f"{kill.at:.3f} (ttl {ttl:g}s + {grace:g}s)"
            )
    return found


# ---------------------------------------------------------------- concurrency caps


def cap_violations(holdings: Iterable[Holding], limit: int) -> list[str]:
    """Never more than ``limit`` runs that kept their lease hold the same key at once.

    An end and a start at the same instant do not overlap (the slot was handed over).
    """
    found = []
    by_key: dict[str, list[Holding]] = defaultdict(list)
    for h in holdings:
        if not h.lost:
            by_key[h.key].append(h)
    for key, held in sorted(by_key.items()):
        # At equal times an end (0) sorts before a start (1).
        events = sorted(
            [(h.end, 0, h) for h in held] + [(h.start, 1, h) for h in held],
            key=lambda event: event[:2],
        )
        running: set[str] = set()
        for at, starts, h in events:
            if not starts:
                running.discard(h.holder)
                continue
            running.add(h.holder)
            if len(running) > limit:
                found.append(
                    f"{key}: {len(running)} holders at {at:.3f} (limit {limit}): "
                    + ", ".join(sorted(running))
                )
    return found


# ---------------------------------------------------------------- rate limits


def rate_violations(
    admissions: Sequence[Admission],
    *,
    rate: float,
    burst: int,
    windows: Iterable[float],
    slack: int = 0,
    wipes: Sequence[Moment] = (),
) -> list[str]:
    """No window of ``w`` seconds holds more than ``burst + floor(rate * w)`` admissions.

    That is GCRA's bound: an idle bucket admits ``burst`` at once, then one per
    ``1 / rate``. ``slack`` admissions are tolerated on top (the gap between an admission
    and the moment its run records it).

    A wipe of the limiter's state (``wipes``) starts a new bucket. Each bucket is held to
    the bound on its own: an admission counts against the bucket it was charged to, and
    one that a reservation paid for before the wipe still runs at its slot after it.
    """
    epochs: dict[int, list[float]] = defaultdict(list)
    for admission in admissions:
        epoch = sum(1 for wipe in wipes if wipe.before < admission.charged)
        epochs[epoch].append(admission.t)
    found = []
    for epoch, runs in sorted(epochs.items()):
        times = sorted(runs)
        for window in windows:
            allowed = burst + math.floor(rate * window + 1e-9) + slack
            count, at = busiest(times, window)
            if count > allowed:
                bucket = f" (bucket #{epoch + 1})" if wipes else ""
                found.append(
                    f"{count} admissions in {window:g}s from {at:.3f}{bucket}: "
                    f"{count - allowed} over burst {burst} + {rate:g}/s, slack {slack}"
                )
    return found


def busiest(times: Sequence[float], window: float) -> tuple[int, float]:
    """The most of the sorted ``times`` in one closed window of length ``window``, and
    where that window starts."""
    best, start, lo = 0, 0.0, 0
    for hi, t in enumerate(times):
        while t - times[lo] > window:
            lo += 1
        if hi - lo + 1 > best:
            best, start = hi - lo + 1, times[lo]
    return best, start


# ---------------------------------------------------------------- write-behind


def newest_acks(acks: Iterable[Ack]) -> dict[str, Ack]:
    """The newest acknowledged write of each key."""
    newest: dict[str, Ack] = {}
    for ack in acks:
        if ack.key not in newest or ack.seq > newest[ack.key].seq:
            newest[ack.key] = ack
    return newest


def _excused(ack: Ack, wipes: Sequence[Moment]) -> bool:
    # Acknowledged before a wipe ended: it may have been queued when Redis lost its data.
    return any(ack.started < wipe.after for wipe in wipes)


def writebehind_violations(
    acks: Iterable[Ack], stored: Mapping[str, int], *, wipes: Sequence[Moment] = ()
) -> list[str]:
    """Every key's newest acknowledged write is in the store (``stored``: key -> the
    sequence number of the value the store holds), never an older one.

    ``wipes`` are moments Redis lost its data (FLUSHDB, a restart without persistence):
    a key whose newest write was made before one ended may hold an older value (see
    :func:`lost_to_wipes`); a write made after is never lost.
    """
    found = []
    for key, ack in sorted(newest_acks(acks).items()):
        if _excused(ack, wipes):
            continue
        if key not in stored:
            found.append(f"{key}: write #{ack.seq} (acknowledged at {ack.acked:.3f}) is lost")
        elif stored[key] < ack.seq:
            found.append(
                f"{key}: the store holds #{stored[key]}, older than write #{ack.seq} "
                f"(acknowledged at {ack.acked:.3f})"
            )
    return found


def lost_to_wipes(
    acks: Iterable[Ack], stored: Mapping[str, int], wipes: Sequence[Moment]
) -> list[str]:
    """Keys whose newest acknowledged write, made before a wipe, is not in the store."""
    return [
        key
        for key, ack in sorted(newest_acks(acks).items())
        if _excused(ack, wipes) and stored.get(key, -1) < ack.seq
    ]


def stale_reads(
    acks: Iterable[Ack], read: Mapping[str, int | None], *, skip: Iterable[str] = ()
) -> list[str]:
    """A read never returns a value older than the key's newest acknowledged write
    (``read``: key -> the sequence number of the value a read returned, None for none)."""
    skipped = set(skip)
    found = []
    for key, ack in sorted(newest_acks(acks).items()):
        if key in skipped:
            continue
        got = read.get(key)
        if got is None or got < ack.seq:
            found.append(f"{key}: a read returned #{got}, older than acknowledged #{ack.seq}")
    return found


# ---------------------------------------------------------------- workers

_TRACEBACK = "Traceback (most recent call last):"
_TASKGUARD_FRAME = re.compile(r'File "[^"]*[/\\]taskguard[/\\]')


def taskguard_tracebacks(log: str) -> list[str]:
    """The tracebacks in ``log`` that pass through taskguard's code (the last line of each)."""
    found = []
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if _TRACEBACK not in line:
            continue
        block = []
        for following in lines[i + 1 :]:
            block.append(following)
            if following and not following.startswith((" ", "\t")):
                break  # the exception line ends the traceback
        if any(_TASKGUARD_FRAME.search(b) for b in block):
            found.append(block[-1] if block else line)
    return found


def crashed_workers(workers: Iterable[WorkerReport]) -> list[str]:
    """Workers the test did not kill still run, and no log shows a taskguard traceback."""
    found = []
    for worker in workers:
        if not worker.killed and not worker.alive:
            found.append(f"{worker.name}: exited, though the test did not kill it")
        found += [f"{worker.name}: traceback: {tb}" for tb in taskguard_tracebacks(worker.log)]
    return found
