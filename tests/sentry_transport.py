"""A Sentry transport that records envelopes instead of sending them (no network).

``sentry_sdk.init(dsn="https://public@example.invalid/1", transport=Recording, ...)``;
after ``sentry_sdk.flush()`` the transactions (with their spans), errors and breadcrumbs
are in :data:`ENVELOPES`. ``Recording.sink`` may be replaced (a worker app writes what it
recorded to Redis, for the test process to read).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from taskguard.sentry import TaskguardIntegration

DSN = "https://public@example.invalid/1"

#: Every event recorded in this process (transactions and errors), oldest first.
ENVELOPES: list[dict[str, Any]] = []


class Recording(Transport):
    """Appends each envelope's events to :data:`ENVELOPES` (or hands them to ``sink``)."""

    sink: ClassVar[Callable[[dict[str, Any]], None]] = ENVELOPES.append

    def capture_envelope(self, envelope: Envelope) -> None:
        for item in envelope.items:
            if item.type in ("transaction", "event") and item.payload.json is not None:
                type(self).sink(item.payload.json)

    def flush(self, timeout: float, callback: Any = None) -> None:
        pass


def transactions(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") == "transaction"]


def errors(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") != "transaction"]


def spans(events: list[dict[str, Any]], op: str) -> list[dict[str, Any]]:
    """Every span with ``op`` in the recorded transactions."""
    return [s for t in transactions(events) for s in t.get("spans", []) if s.get("op") == op]


@contextmanager
def recording(*integrations: Any) -> Iterator[list[dict[str, Any]]]:
    """``sentry_sdk.init`` with the recording transport and only ``integrations``; on exit
    a client without them (their hooks go quiet) and an empty record."""
    ENVELOPES.clear()
    sentry_sdk.init(
        dsn=DSN,
        transport=Recording,
        traces_sample_rate=1.0,
        default_integrations=False,
        auto_enabling_integrations=False,
        integrations=list(integrations),
    )
    # Sentry runs setup_once once per process; a test fixture (``isolated``) may have
    # dropped the signal receivers taskguard's connected since. Doing it again is a no-op
    # for the rest (other integrations' setup_once would patch twice: not those).
    TaskguardIntegration.setup_once()
    try:
        yield ENVELOPES
    finally:
        sentry_sdk.init(default_integrations=False, auto_enabling_integrations=False)
        ENVELOPES.clear()
