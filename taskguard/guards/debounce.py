"""Debounce: of a burst of calls for one key, only the newest runs, after a quiet delay.

``Debounce(2.0, key="{doc_id}")`` on a task: "reindex document X 2 s after its last
edit". Each call's message, when it first reaches a worker, registers itself as the
newest for its key (restarting the delay) and is deferred by ``delay``; when it comes
back it runs only if it is still the newest. Every earlier call ends unrun, its result
state ``SUPERSEDED`` with the newest call's id. It works the same for ``delay()``,
``apply_async()`` and ``send_task``, since it acts when the message arrives, not at
publish. See docs/debounce.md.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from taskguard._validate import name as check_name
from taskguard._validate import seconds
from taskguard.backend.ops import Op
from taskguard.backend.registry import MemoryState, OpKind, register
from taskguard.errors import GuardDenied
from taskguard.keys import KeySchema

from .base import Guard, RunContext, Verdict, check_outage_policy
from .keying import KeyFunc, KeySource

__all__ = [
    "HEADER_DEBOUNCE",
    "HEADER_PUBLISHED",
    "Debounce",
    "DebounceOp",
    "Superseded",
    "stamp_publish",
]

#: Set on a debounced call's deferred message: the id that registered itself as newest.
HEADER_DEBOUNCE = "taskguard-debounce"
#: When a message was published (epoch seconds), set by a ``before_task_publish`` handler
#: in every process that imports taskguard's Celery layer; kept through deferrals.
HEADER_PUBLISHED = "taskguard-published-at"
#: The key code of a debounce's state (``<prefix>:{<tag>}:deb:<name>[:<key>]``).
KEY_KIND = "deb"
#: How much longer than the delay the newest call's id is kept.
_TTL_MARGIN = 60.0


@dataclass(frozen=True, slots=True)
class DebounceOp:
    """One call of a debounced task (see lib/debounce.lua).

    Attributes:
        key: The debounce's state: the newest call's id.
        task_id: This call's id.
        delay: Seconds after the newest call it runs.
        ttl: Seconds the newest call's id is kept.
        phase: ``"arrive"`` (first delivery) or ``"due"`` (back after its delay).
        stamp: When the call was published (epoch seconds; 0 when unknown): of two
            calls, the one published later is the newer, whichever reaches a worker first.
    """

    key: str
    task_id: str
    delay: float
    ttl: float
    phase: str = "arrive"
    stamp: float = 0.0


def _stamp_us(op: DebounceOp) -> int:
    return int(op.stamp * 1_000_000)


def newest_id(value: str | None) -> str | None:
    """The task id in a debounce key's value (``"<stamp> <id>"``)."""
    return None if value is None else value.partition(" ")[2] or None


class _Memory:
    def wait(self, state: MemoryState, op: DebounceOp, now: float) -> tuple[float, bool]:
        held = state.lease(op.key, now)
        stamp, _, newest = held[0].partition(" ") if held else ("", "", None)
        if op.phase == "arrive":
            if newest not in (None, op.task_id) and int(stamp) > _stamp_us(op):
                return 1e-6, False
            state.leases[op.key] = (f"{_stamp_us(op)} {op.task_id}", now + op.ttl)
            return op.delay, False
        return (0.0 if newest in (None, op.task_id) else 1e-6), False

    def commit(self, state: MemoryState, op: DebounceOp, at: float, now: float, flag: bool) -> int:
        return 0  # the winner stays registered: stragglers that come back find it

    def release(self, state: MemoryState, op: DebounceOp, now: float) -> int:
        return 0

    def renew(self, state: MemoryState, op: DebounceOp, now: float) -> bool:
        return True


def _encode(op: DebounceOp, release: bool) -> tuple[list[str], list[Any]]:
    args = [op.task_id, int(op.delay * 1_000_000), int(op.ttl * 1000), op.phase, _stamp_us(op)]
    return [op.key], args


register(OpKind(DebounceOp, KEY_KIND, "debounce", _encode, _Memory(), undo=lambda op: None))


class Superseded(GuardDenied):
    """A debounced call was superseded by a newer one for its key (it never runs)."""


class Debounce(Guard):
    """Run only the newest of a burst of calls per key, ``delay`` seconds after it.

    Args:
        delay: Quiet seconds after the newest call before it runs; each new call for the
            key restarts it.
        key: Template over the task's arguments (``"{doc_id}"``) or a callable: one
            debounce per value. None: one for every call of the task.
        name: Debounce name; tasks sharing it share keys. Defaults to the task name.
        on_outage: ``"deny"`` (default: defer until Redis answers), ``"allow"`` (run
            every call) or ``"local"`` (debounce within the process) while Redis is down.

    Example:
        >>> Debounce(2.0, key="{doc_id}")
        Debounce(2.0, key='{doc_id}')
    """

    kind = "debounce"
    admission_rank = 5  # first: a superseded call takes nothing else
    settings_fields = frozenset({"delay", "key", "name", "on_outage"})
    settings_bare = "delay"
    reads_request = True
    _positional = ("delay",)
    delay: float
    key: KeyFunc
    name: str | None
    on_outage: str
    _signature: inspect.Signature | None

    def __init__(
        self,
        delay: float,
        *,
        key: KeySource = None,
        name: str | None = None,
        on_outage: str = "deny",
    ) -> None:
        self._set(
            delay=seconds(delay, "delay"),
            key=KeyFunc(key),
            name=None if name is None else check_name(name, "name"),
            on_outage=check_outage_policy(on_outage),
            _signature=None,
        )

    def _fields(self) -> dict[str, Any]:
        return {
            "delay": self.delay,
            "key": self.key.source,
            "name": self.name,
            "on_outage": self.on_outage,
        }

    def bucket(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
        return self.key.render(args, kwargs, self._signature)

    def task_ops(
        self, keys: KeySchema, args: Sequence[Any], kwargs: Mapping[str, Any], task_id: str
    ) -> list[Op]:
        key = keys.guard(KEY_KIND, self.name or "", self.bucket(args, kwargs))
        return [DebounceOp(key, task_id, self.delay, self.delay + _TTL_MARGIN)]

    def for_request(self, op: Op, request: Any) -> Op:
        """The message's publish time; a message that registered itself already comes
        back ``due``, and so does an eager call (no worker to wait in: it runs at once)."""
        headers = getattr(request, "headers", None) or {}
        if request.is_eager or headers.get(HEADER_DEBOUNCE) == request.id:
            return replace(op, phase="due")  # type: ignore[type-var]
        stamp = headers.get(HEADER_PUBLISHED)
        if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
            return replace(op, stamp=float(stamp))  # type: ignore[type-var]
        return op

    def on_denied(self, op: Op, retry_after: float, run: RunContext) -> Verdict:
        if isinstance(op, DebounceOp) and op.phase == "arrive" and retry_after >= op.delay:
            return Verdict("defer", headers={HEADER_DEBOUNCE: run.task_id})
        newest = newest_id(run.backend.owner(op.key))
        return Verdict(
            "superseded",
            f"superseded by {newest} ({op.key})",
            meta={"superseded_by": newest},
        )

    def denied_error(self, retry_after: float, key: str | None = None) -> Superseded:
        return Superseded(
            f"{self!r}: a newer call for {key!r} supersedes this one",
            guard=repr(self),
            key=key,
            retry_after=retry_after,
        )


def stamp_publish(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """``before_task_publish`` handler: stamp a new message with its publish time (a
    re-published one keeps its first stamp)."""
    if headers is not None and HEADER_PUBLISHED not in headers:
        headers[HEADER_PUBLISHED] = time.time()
