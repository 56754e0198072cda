"""Guard events: what happens to guards anywhere in the fleet, on one channel per prefix.

Rare, operator-worthy events (a breaker's transition, a lost lease, dead-lettered
write-behind records, a task past its deferral cap, a limit changed, an operator's
action) are published as JSON on the Redis pub/sub channel ``<prefix>:events``
(:meth:`taskguard.keys.KeySchema.events`). Signals (:mod:`taskguard.signals`) are seen
only by the process that sends them; events reach every subscriber, on any host.

* **Publishing.** A Celery worker publishes its signals as events (setting ``events``,
  on by default); another process calls :func:`install`. :func:`publish_event` publishes
  one event directly (the admin commands do). Publishing never raises into a task.
* **Receiving.** :func:`subscribe` (or ``taskguard.connect(url).events()``) returns an
  :class:`EventStream` to iterate; ``taskguard events`` tails the channel.

Example:
    >>> import taskguard
    >>> from taskguard import events
    >>> client = taskguard.connect("memory://")
    >>> stream = client.events(timeout=0.5)
    >>> events.publish_event(client, "admin", action="breaker_reset", name="geo", user="ops")
    True
    >>> event = stream.get(timeout=1)
    >>> event.type, event["action"], event["prefix"], event["user"]
    ('admin', 'breaker_reset', 'tg', 'ops')
    >>> stream.close()

See docs/observability.md for every event type and its fields.
"""

from __future__ import annotations

from .publish import install, installed, publish_event, uninstall
from .schema import COMMON_FIELDS, EVENT_TYPES, Event, EventType
from .subscribe import EventStream, subscribe

__all__ = [
    "COMMON_FIELDS",
    "EVENT_TYPES",
    "Event",
    "EventStream",
    "EventType",
    "install",
    "installed",
    "publish_event",
    "subscribe",
    "uninstall",
]
