"""Waiting on a wake-up list, and a waiter's next admission sent with its wait (a mixin of
:class:`~taskguard.backend.redis.RedisBackend`, apart so that module stays readable).

A waiter blocks with ``BLPOP`` on the list a release pushes to, then tries again. Sent as
two calls, the attempt starts only after the wake-up has crossed back to the waiter and
the waiter's process has been scheduled: a round trip and a wake-up of the process, about
0.3 ms of a 1 ms hand-off on the 2-core benchmark machine. :meth:`admit_after_wakeup`
writes the ``BLPOP`` and the admission's ``EVALSHA`` together; Redis keeps the second
command of a blocked client until the ``BLPOP`` returns and runs it right then, so the
admission is decided as the wake-up arrives.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from .ops import Admission, Op, RateOp
from .wire import REDIS_ERRORS, admission_from, admit_call, blpop_slice, blpop_timeout

if TYPE_CHECKING:
    import redis

    from taskguard.errors import TaskGuardError
    from taskguard.keys import KeySchema

    from .lane import Lanes
    from .outage import OutageBreaker
    from .topology import SlotRoutes

__all__ = ["Waiting"]


class Waiting:
    """``wait_for_wakeup`` and ``admit_after_wakeup`` on Redis."""

    if TYPE_CHECKING:
        _options: dict[str, Any]
        _routes: SlotRoutes | None
        _lanes: Lanes
        keys: KeySchema
        breaker: OutageBreaker

        @property
        def client(self) -> redis.Redis: ...

        @property
        def socket_timeout(self) -> float | None: ...

        def commands(self, what: str) -> AbstractContextManager[redis.Redis]: ...

        def _failure(self, exc: BaseException, what: str) -> TaskGuardError: ...

        def admit(self, ops: Sequence[Op], *, reserve_within: float = 0.0) -> Admission: ...

    def _slice(self) -> float:
        # The read timeout of the client the BLPOP goes through: a client given to the
        # backend has its own (None: reads never time out, any slice will do).
        timeout = self.socket_timeout
        return blpop_slice(self._options["socket_timeout"] if timeout is None else timeout)

    def wait_for_wakeup(self, key: str, timeout: float) -> bool:
        # BLPOP in slices shorter than the socket timeout, so a wait never looks like a
        # dead server; a release pushes to the list and ends the wait at once.
        deadline = time.monotonic() + timeout
        slice_ = self._slice()
        while (left := deadline - time.monotonic()) > 0:
            with self.commands("BLPOP"):
                if self.client.blpop([key], timeout=blpop_timeout(left, slice_)):
                    return True
        return False

    def admit_after_wakeup(
        self, key: str, timeout: float, ops: Sequence[Op], *, reserve_within: float = 0.0
    ) -> Admission:
        # One BLPOP slice at most, then the admission, in one write. On a Cluster, for the
        # lean rate-limit path (it picks its script by what the last reply said) and for
        # no ops at all, the wait and the admission go apart, as the base class does.
        op = ops[0] if ops else None
        if (
            op is None
            or self._routes is not None
            or self.keys.spread
            or (len(ops) == 1 and type(op) is RateOp and op.overrides is not None)
        ):
            self.wait_for_wakeup(key, timeout)
            return self.admit(ops, reserve_within=reserve_within)
        script, keys, args = admit_call(ops, reserve_within)
        wait = blpop_timeout(timeout, self._slice())
        self.breaker.before_call()
        try:
            lane = self._lanes.lane(self.client)
            reply = lane.wake_then_evalsha(key, wait, script, keys, args)
        except REDIS_ERRORS as exc:
            raise self._failure(exc, "admission") from exc
        self.breaker.record_success()
        return admission_from(ops, reply)
