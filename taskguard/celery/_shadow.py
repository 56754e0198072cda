"""Shadow mode: guards that are evaluated and counted, never enforced.

A guard in shadow mode sees every run the enforced guards admitted, as if it were
enforced: a rate limit that admits spends its token, a cap or lock that admits holds its
slot until the run ends. When it would refuse, the run goes on, nothing is charged (as if
the task had been deferred), and the refusal is counted: the
:data:`taskguard.signals.shadow_denied` signal, an INFO log line, and the
``taskguard_shadow_denials_total`` metric. So a new limit can be rolled out by watching
what it would do first (Envoy's ratelimit has this mode).

Guards get there two ways: ``shadow_guards=[...]`` on the task (beside ``guards``), or
the per-task setting ``"shadow": ["rate_limit", ...]``, which moves the task's guards of
those kinds into shadow mode. Circuit breakers, and locks that claim at publish, cannot
run in shadow mode: neither decides at admission alone.

Each shadow guard costs one more round trip per admitted run; a shadow guard never
delays, defers or fails a task, whatever Redis does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from taskguard import signals
from taskguard.backend.base import Backend
from taskguard.errors import BackendError, BackendUnavailable, ConfigurationError
from taskguard.guards.base import Guard, guard_classes
from taskguard.heartbeat import heartbeat_for

from ._run_state import Run, holds

__all__ = ["check_shadow_kinds", "evaluate_shadow", "split_shadow"]

logger = logging.getLogger("taskguard.shadow")

#: Kinds that cannot be shadowed: a breaker decides from recorded outcomes, not at
#: admission alone.
_NOT_SHADOWABLE = frozenset({"circuit_breaker"})


def check_shadow_kinds(value: object, field: str = "shadow") -> tuple[str, ...]:
    """The ``shadow`` setting: a list of guard kinds that run in shadow mode."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigurationError(
            f"must be a list of guard kinds, got {type(value).__name__}", field=field
        )
    kinds = tuple(value)
    known = sorted(set(guard_classes()) - _NOT_SHADOWABLE)
    for kind in kinds:
        if kind not in known:
            raise ConfigurationError(
                f"cannot put {kind!r} in shadow mode; kinds that can: {', '.join(known)}",
                field=field,
            )
    return kinds


def split_shadow(
    guards: Sequence[Guard], shadow_guards: Sequence[Guard], raw: Mapping[str, Any]
) -> tuple[list[Guard], list[Guard]]:
    """The task's enforced guards and its shadow guards, after the ``shadow`` setting."""
    kinds = set(check_shadow_kinds(raw["shadow"])) if "shadow" in raw else set()
    enforced = [g for g in guards if g.kind not in kinds]
    shadow = [*shadow_guards, *(g for g in guards if g.kind in kinds)]
    for guard in shadow:
        if guard.kind in _NOT_SHADOWABLE or getattr(guard, "at_publish", False):
            raise ConfigurationError(
                f"{guard!r} cannot run in shadow mode: it does not decide at admission alone",
                field="shadow",
            )
    return enforced, shadow


def evaluate_shadow(
    task: Any,
    shadow: Sequence[Guard],
    request: Any,
    *,
    call: tuple[Sequence[Any], Mapping[str, Any]],
    run: Run,
) -> None:
    """Check each shadow guard for this admitted run; hold what admits, count refusals."""
    backend: Backend = run.holder
    args, kwargs = call
    for guard in shadow:
        ops = guard.task_ops(backend.keys, args, kwargs, request.id)
        try:
            admission = backend.admit(ops)
        except (BackendUnavailable, BackendError) as exc:
            logger.debug("%s[%s]: shadow %r not checked: %s", task.name, request.id, guard, exc)
            continue
        if admission.allowed:
            held = [op for op in ops if holds(op)]
            run.held.extend(held)
            heartbeat = heartbeat_for(backend)
            run.handles += [heartbeat.add(op) for op in held]
            continue
        op = ops[admission.denied or 0]
        logger.info(
            "%s[%s]: shadow %r would have refused it (on %s, retry after %.3fs); it runs",
            task.name,
            request.id,
            guard,
            op.key,
            admission.retry_after,
        )
        signals.shadow_denied.send(
            sender=task,
            task_id=request.id,
            guard=guard,
            key=op.key,
            retry_after=admission.retry_after,
        )
