"""What a task run holds between its admission and its release."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeGuard

from taskguard.backend.base import Backend
from taskguard.backend.ops import Held, LeaseOp, Op
from taskguard.backend.registry import kind_of
from taskguard.errors import BackendError, BackendUnavailable
from taskguard.guards.base import Guard

__all__ = ["Run", "RunInfo", "give_up_claims", "holds", "is_claim"]

logger = logging.getLogger("taskguard.task")


@dataclass
class RunInfo:
    """What the guards gave this run, as ``self.request.taskguard`` inside the task.

    Attributes:
        fencing_tokens: Fencing token per lock key held by this run.
        lease_lost: Set (from the heartbeat thread) when a lease of this run was found
            expired or taken over while the task was still running. A task doing work
            that must stay exclusive should check it, and the fencing token, before
            committing that work.
    """

    fencing_tokens: dict[str, int] = field(default_factory=dict)
    lease_lost: bool = False
    lost_keys: set[str] = field(default_factory=set, repr=False)

    @property
    def fencing_token(self) -> int | None:
        """The fencing token of the run's lock (the first one, if it holds several)."""
        return next(iter(self.fencing_tokens.values()), None)


def holds(op: Op) -> TypeGuard[Held]:
    return bool(kind_of(op).holds(op))


def is_claim(op: Op) -> TypeGuard[LeaseOp]:
    """A publish-time uniqueness claim (it belongs to the message, not to one run)."""
    return getattr(op, "purpose", None) == "claim"


@dataclass
class Run:
    """A task run in progress: the guards it passed and what it holds where."""

    guards: list[Guard]
    ops: list[Op]
    holder: Backend  # the shared backend, or the process-local one when admitted offline
    held: list[Held]
    info: RunInfo
    breakers: list[tuple[Guard, Held]] = field(default_factory=list)
    handles: list[int] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


def give_up_claims(backend: Backend, ops: Sequence[Op]) -> None:
    """This message will not run: free its publish-time claims for new publishes."""
    claims = [op for op in ops if is_claim(op)]
    if claims:
        try:
            backend.release(claims)  # owner-checked: only claims this message holds
        except BackendUnavailable as exc:
            logger.warning("claims kept until they expire: %s", exc)
        except BackendError as exc:
            logger.error("claims kept until they expire: %s", exc)
