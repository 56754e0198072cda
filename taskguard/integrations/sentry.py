"""Sentry: taskguard's spans, breadcrumbs and error context in the transaction that
Sentry's Celery integration opens for each task.

Enable it with the rest of your Sentry setup; nothing is sent unless you call
``sentry_sdk.init``::

    import sentry_sdk
    from taskguard.sentry import TaskguardIntegration

    sentry_sdk.init(dsn="...", traces_sample_rate=0.1, integrations=[TaskguardIntegration()])

What it adds (docs/observability.md has the details):

* spans ``taskguard.admit`` and ``taskguard.release`` around a task's admission and
  release, with the guards, the decision, ``retry_after`` and whether it was degraded;
* ``cache.get`` / ``cache.put`` spans in the form of Sentry's Caches module
  (``cache.key``, ``cache.hit``, ``cache.item_size``);
* a ``queue.publish`` span around a deferral's re-publish (``messaging.message.id``,
  ``messaging.destination.name``, the deferral count); the message keeps the trace
  (``sentry-trace`` and ``baggage``) so the deferred run continues it;
* a ``taskguard.drain.batch`` transaction (or span, inside one) per drain batch;
* breadcrumbs for denials, lost leases and circuit breaker transitions;
* a ``taskguard`` context and a ``taskguard.guards`` tag on every error of a guarded task.
"""

from __future__ import annotations

from typing import Any

from celery.exceptions import Ignore, Reject, Retry

from taskguard import _instrument, signals

from ._labels import described, guard_label

try:
    import sentry_sdk
    from sentry_sdk.integrations import Integration
    from sentry_sdk.scope import add_global_event_processor
    from sentry_sdk.tracing import Span
except ImportError as exc:  # pragma: no cover - sentry-sdk is a core dependency today
    raise ImportError(
        "taskguard's Sentry integration needs sentry-sdk: pip install 'celery-taskguard[sentry]'"
    ) from exc

__all__ = ["TaskguardIntegration"]

ORIGIN = "auto.taskguard"
#: Exceptions that end a task run as Celery's control flow, not as an error.
_CONTROL_FLOW = (Ignore, Reject, Retry)
_DRAIN_FIELDS = ("namespace", "partition", "records", "rows")


class TaskguardIntegration(Integration):
    """taskguard's Sentry integration: pass it to ``sentry_sdk.init(integrations=[...])``."""

    identifier = "taskguard"
    origin = ORIGIN

    @staticmethod
    def setup_once() -> None:
        """Install the span hook, the breadcrumb receivers and the event processor (once
        per process; all do nothing while no client with this integration is active)."""
        _instrument.install(_HOOK)
        signals.guard_denied.connect(_on_denied, weak=False)
        signals.lease_lost.connect(_on_lease_lost, weak=False)
        signals.circuit_state_changed.connect(_on_circuit_state_changed, weak=False)
        add_global_event_processor(_errors_only_context)


def _active() -> bool:
    return sentry_sdk.get_client().get_integration(TaskguardIntegration) is not None


class _SpanHook(_instrument.Hook):
    """Opens a Sentry span for each activity, inside the current transaction."""

    def start(self, activity: _instrument.Activity) -> Any:
        if not _active():
            return None
        op = activity.op
        # The guard context is set when the admission ends (it names the decision), and
        # an admission that raises ends too: nothing of the run can fail before that.
        parent: Any = sentry_sdk.get_current_span()  # a StreamedSpan too, when streaming
        if isinstance(parent, Span):
            # The parent's own start_child: sentry_sdk.start_span forks a scope to find
            # the same parent, which costs more than the span.
            span = parent.start_child(op=op, name=_name(activity), origin=ORIGIN)
        elif parent is not None:  # a span of another kind (span streaming)
            span = sentry_sdk.start_span(op=op, name=_name(activity), origin=ORIGIN)
        elif op == _instrument.DRAIN_BATCH:  # the drain runs outside any task
            span = sentry_sdk.start_transaction(op=op, name=_name(activity), origin=ORIGIN)
        else:
            return None  # no transaction to add to
        span.__enter__()
        return span

    def finish(
        self, activity: _instrument.Activity, span: Any, error: BaseException | None
    ) -> None:
        if span is None:
            if activity.op == _instrument.ADMIT and _active():
                _set_guard_context(activity.data)
            return
        if activity.op == _instrument.ADMIT:
            _set_guard_context(activity.data)  # the span was opened: Sentry is on
        span.update_data(_span_data(activity))
        if error is None or isinstance(error, _CONTROL_FLOW):
            # No status on success, as Sentry's own spans: "ok" would add a status and
            # a status tag to every span of every transaction sent.
            span.__exit__(None, None, None)
        else:
            span.__exit__(type(error), error, error.__traceback__)


_HOOK = _SpanHook()


def _name(activity: _instrument.Activity) -> str:
    data = activity.data
    op = activity.op
    if op in (_instrument.CACHE_GET, _instrument.CACHE_PUT):
        return ", ".join(map(str, data.get("keys", ())))
    if op == _instrument.PUBLISH:
        return str(data.get("destination") or data.get("task"))
    if op == _instrument.DRAIN_BATCH:
        return f"drain {data.get('namespace')}"
    return f"{op.rpartition('.')[2]} {data.get('task')}"


def _span_data(activity: _instrument.Activity) -> dict[str, Any]:
    """The span data of an activity, in Sentry's names where Sentry has one."""
    data = activity.data
    op = activity.op
    if op == _instrument.ADMIT:
        return _admit_data(data)
    if op == _instrument.RELEASE:
        guards = described(data.get("guards", ()))
        return {
            "taskguard.guards": list(guards.labels),
            "taskguard.guard_kinds": list(guards.kinds),
            "taskguard.outcome": data.get("outcome"),
            "taskguard.leases_lost": data.get("lost", 0),
        }
    if op in (_instrument.CACHE_GET, _instrument.CACHE_PUT):
        found = {
            "cache.key": [str(k) for k in data.get("keys", ())],
            "cache.item_size": data.get("size", 0),
            "taskguard.namespace": data.get("namespace"),
        }
        if op == _instrument.CACHE_GET:
            found["cache.hit"] = bool(data.get("hit"))
        return found
    if op == _instrument.PUBLISH:
        return {
            "messaging.message.id": data.get("message_id"),
            "messaging.destination.name": data.get("destination"),
            "taskguard.deferrals": data.get("deferrals"),
            "taskguard.delay": data.get("delay"),
            "taskguard.cause": data.get("cause"),
            "taskguard.publish": data.get("kind"),
        }
    if op == _instrument.DRAIN_BATCH:
        return {f"taskguard.{k}": data.get(k) for k in _DRAIN_FIELDS}
    return {}


def _admit_data(data: dict[str, Any]) -> dict[str, Any]:
    """An admission's span data. Every span is serialized into every transaction sent,
    at a cost per field: the task is the span's name (and the transaction's), and the
    deferrals and the time waited are there only when not zero."""
    guards = described(data.get("guards", ()))
    found = {
        "taskguard.guards": list(guards.labels),
        "taskguard.guard_kinds": list(guards.kinds),
        "taskguard.decision": data.get("decision"),
        "taskguard.retry_after": data.get("retry_after", 0.0),
        "taskguard.degraded": data.get("degraded", False),
    }
    if data.get("deferrals"):
        found["taskguard.deferrals"] = data["deferrals"]
    if data.get("waited"):
        found["taskguard.waited"] = data["waited"]
    if data.get("guard") is not None:
        found["taskguard.denied_by"] = guard_label(data["guard"])
    return found


def _set_guard_context(data: dict[str, Any]) -> None:
    """Name the task's guards on the scope, so an error of this run carries them."""
    guards = described(data.get("guards", ()))
    context = {
        "task": data.get("task"),
        "guards": list(guards.labels),
        "deferrals": data.get("deferrals", 0),
    }
    if "decision" in data:
        context["decision"] = data["decision"]
    if data.get("guard") is not None:
        context["denied_by"] = guard_label(data["guard"])
    scope = sentry_sdk.get_isolation_scope()
    scope.set_context("taskguard", context)
    scope.set_tag("taskguard.guards", guards.tag)


def _errors_only_context(event: Any, hint: Any) -> Any:
    """Keep the ``taskguard`` context off transactions: their spans say the same, and
    it would be serialized into every one sent. (The tag stays, to search by.)"""
    if event.get("type") == "transaction":
        contexts = event.get("contexts")
        if contexts:
            contexts.pop("taskguard", None)
    return event


# ---------------------------------------------------------------- breadcrumbs


def _on_denied(sender: Any = None, **kwargs: Any) -> None:
    if not _active():
        return
    label = guard_label(kwargs.get("guard"))
    sentry_sdk.add_breadcrumb(
        category="taskguard.denied",
        type="info",
        level="info",
        message=f"{getattr(sender, 'name', sender)} denied by {label}",
        data={
            "task_id": kwargs.get("task_id"),
            "guard": label,
            "key": kwargs.get("key"),
            "retry_after": kwargs.get("retry_after"),
            "degraded": kwargs.get("degraded"),
        },
    )


def _on_lease_lost(sender: Any = None, **kwargs: Any) -> None:
    if not _active():
        return
    key = kwargs.get("key")
    sentry_sdk.add_breadcrumb(
        category="taskguard.lease_lost",
        type="error",
        level="warning",
        message=f"{getattr(sender, 'name', sender)} lost its lease on {key}",
        data={"task_id": kwargs.get("task_id"), "key": key},
    )


def _on_circuit_state_changed(sender: Any = None, **kwargs: Any) -> None:
    if not _active():
        return
    name, old, new = kwargs.get("name"), kwargs.get("old"), kwargs.get("new")
    sentry_sdk.add_breadcrumb(
        category="taskguard.breaker",
        type="info",
        level="warning" if new == "open" else "info",
        message=f"circuit {name!r}: {old} -> {new} ({kwargs.get('reason')})",
        data={
            "breaker": name,
            "old": old,
            "new": new,
            "reason": kwargs.get("reason"),
            "task_id": kwargs.get("task_id"),
        },
    )
