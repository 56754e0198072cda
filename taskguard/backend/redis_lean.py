"""A lone rate-limit op admitted without reading the limits set at run time, while none
applies to its bucket (a mixin of :class:`~taskguard.backend.redis.RedisBackend`, apart
so that module stays readable).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .lua import Script
from .ops import Admission, RateOp
from .spread_limits import RemoteLimits
from .wire import admission_from, admit_call

__all__ = ["OVERRIDE_RECHECK", "LeanRate"]

#: Seconds a bucket is admitted without reading the limits set at run time, after a read
#: found none for it: how long a new one may take to reach this process.
OVERRIDE_RECHECK = 0.5
_WATCHED_MAX = 4096


class LeanRate:
    """The admission of one rate-limit op with a hash of limits set at run time."""

    #: (overrides hash, field) -> monotonic time until which no limit set at run time is
    #: read for that bucket (none applied when it was last read).
    _no_override: dict[tuple[str, str], float]
    #: id(op) -> (op, the op without its overrides key).
    _lean_ops: dict[int, tuple[RateOp, RateOp]]
    #: A spread schema's reads of the same hashes (see spread_limits.py).
    _limits: RemoteLimits

    if TYPE_CHECKING:

        def _run(
            self, script: Script, keys: Sequence[str], args: Sequence[Any], what: str
        ) -> Any: ...

    def _admit_rate(self, op: RateOp, overrides: str, reserve_within: float) -> Admission:
        # A bucket that no limit set at run time applied to, checked less than
        # OVERRIDE_RECHECK ago, is admitted without reading them (one command less per
        # decision); the next call after that reads them again, in its own admission.
        # So a limit set elsewhere applies within OVERRIDE_RECHECK, and one set through
        # this backend at once (see forget_overrides).
        watched = (overrides, op.field)
        now = time.monotonic()
        if now < self._no_override.get(watched, 0.0):
            cached = self._lean_ops.get(id(op))
            if cached is None or cached[0] is not op:
                if len(self._lean_ops) >= _WATCHED_MAX:
                    self._lean_ops.clear()
                cached = self._lean_ops[id(op)] = (op, dataclasses.replace(op, overrides=None))
            lean = cached[1]
            script, keys, args = admit_call([lean], reserve_within)
            return admission_from([lean], self._run(script, keys, args, "admission"))
        script, keys, args = admit_call([op], reserve_within)
        reply = self._run(script, keys, args, "admission")
        if reply[-1] == 0 and len(reply) > (5 if reply[0] else 4):  # none applied
            if len(self._no_override) >= _WATCHED_MAX:
                self._no_override.clear()
            self._no_override[watched] = now + OVERRIDE_RECHECK
        return admission_from([op], reply)

    def forget_overrides(self) -> None:
        """Read limits set at run time on the next admission of every bucket (called when
        this backend sets or clears one)."""
        self._no_override.clear()
        self._limits.forget()
