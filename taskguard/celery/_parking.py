"""Work-conserving deferral in Celery: the deferral lane, parking and hand-backs.

* **The lane.** Every guarded worker also consumes ``<queue>.deferred`` for each queue it
  consumes (:func:`add_lanes`), and a deferred task is re-published there
  (:func:`lane_of`), not behind the unread backlog of its queue: a task that reserved a
  rate-limit slot is in the worker's ETA timer at once and starts on its slot.
* **Parking.** A task refused by a concurrency cap or a lock is parked in Redis
  (:func:`park`, :class:`taskguard.backend.parking.Parking`) instead of coming back by
  time. The release that frees the slot hands the first parked task back
  (:func:`hand_back`) with the slot held for it, so no slot stands idle while work waits
  and the lot stays FIFO; a sweep in every worker (:class:`Sweeper`) hands back what a
  release could not (its holder died) and re-publishes hand-backs that never arrived.
* **Exactly once.** A handed-back message carries :data:`HEADER_HANDBACK`; it runs only
  if it claims its ticket (:func:`claim`), so a copy published twice runs once.

Payloads are the task's message as :meth:`celery.Task.signature_from_request` rebuilds it
(same id, arguments, options and headers; ``request.retries`` untouched), serialized with
the app's task serializer.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kombu import serialization

from taskguard import _instrument
from taskguard.backend.base import Backend
from taskguard.backend.ops import LeaseOp, Op, SlotOp
from taskguard.backend.parking import HANDOFF_OWNER_SUFFIX, Parking
from taskguard.backend.redis import RedisBackend
from taskguard.backend.spread import same_slot
from taskguard.errors import BackendError, BackendUnavailable

__all__ = [
    "HEADER_HANDBACK",
    "LANE_SUFFIX",
    "Sweeper",
    "add_lanes",
    "claim",
    "drop_revoked",
    "hand_back",
    "lane_of",
    "pack",
    "parking_for",
    "parks",
    "publish",
]

logger = logging.getLogger("taskguard.parking")

#: Marks a handed-back message: ``{"key": guard key, "retries": n}``.
HEADER_HANDBACK = "taskguard-handback"
#: The deferral lane of queue ``q`` is ``q + LANE_SUFFIX``.
LANE_SUFFIX = ".deferred"

#: Options of a rebuilt message that ``send_task`` takes as they are.
_SEND_OPTIONS = (
    "task_id",
    "root_id",
    "parent_id",
    "group_id",
    "group_index",
    "shadow",
    "chord",
    "chain",
    "link",
    "link_error",
    "expires",
    "soft_time_limit",
    "time_limit",
    "headers",
    "retries",
    "reply_to",
    "replaced_task_nesting",
    "ignore_result",
    "priority",
)


_dumps: Callable[..., tuple[str, str, bytes | str]] = serialization.dumps
_loads: Callable[..., Any] = serialization.loads


def parking_for(backend: Backend) -> Parking | None:
    """Where ``backend`` parks tasks, or None when it cannot (memory: defer by time)."""
    return Parking(backend) if isinstance(backend, RedisBackend) else None


def parks(op: Op) -> tuple[str, int, tuple[str, str] | None] | None:
    """How a refused ``op`` parks: ``(mode, limit, run-time limits and field)``, or None
    if it does not."""
    if isinstance(op, SlotOp) and op.park_key is not None:
        if op.overrides is None or not same_slot(op.overrides, op.key):
            # A spread keyed cap: its hash of run-time counts is in another slot, which
            # a parking script cannot read; the lot counts with the limit it was given
            # (the caller's Parking.localized read that hash first).
            return "slot", op.limit, None
        return "slot", op.limit, (op.overrides, op.field)
    if isinstance(op, LeaseOp) and op.park_key is not None and op.purpose == "lock":
        return "lease", 1, None
    return None


# ---------------------------------------------------------------- the lane


def lane_name(queue: str) -> str:
    """The deferral lane of ``queue`` (a lane is its own lane)."""
    return queue if queue.endswith(LANE_SUFFIX) else queue + LANE_SUFFIX


def add_lanes(app: Any) -> list[str]:
    """Make this worker consume the lane of every queue it consumes; returns the lanes."""
    queues = app.amqp.queues
    consumed = queues.consume_from if queues.consume_from is not None else dict(queues)
    added = []
    for name in list(consumed):
        lane = lane_name(name)
        if lane not in consumed:
            queues.select_add(lane)
            added.append(lane)
    return added


def lane_of(app: Any, request: Any) -> str | None:
    """The lane of the queue ``request`` came from, or None if that queue is not known
    here (the message is then re-published the way it came)."""
    info = request.delivery_info or {}
    routing_key = info.get("routing_key")
    if not routing_key:
        return None
    queues = app.amqp.queues
    if routing_key in queues:
        return lane_name(routing_key)
    for queue in queues.values():
        if queue.routing_key == routing_key:
            return lane_name(queue.name)
    return None


# ---------------------------------------------------------------- payloads


def pack(
    task: Any, request: Any, *, headers: Mapping[str, Any], lane: str | None, key: str
) -> bytes:
    """The running message as a parked payload: re-published as it is by :func:`publish`."""
    signature = task.signature_from_request(request, headers=dict(headers))
    options = {k: signature.options[k] for k in _SEND_OPTIONS if k in signature.options}
    if lane is None:  # re-published the way it came
        for k in ("queue", "exchange", "routing_key"):
            if k in signature.options:
                options[k] = signature.options[k]
    else:
        options["queue"] = lane
    body = {"args": list(signature.args), "kwargs": dict(signature.kwargs), "options": options}
    content_type, encoding, data = _dumps(body, serializer=task.app.conf.task_serializer)
    raw = data if isinstance(data, bytes) else data.encode(encoding or "utf-8")
    envelope = {
        "task": task.name,
        "id": request.id,
        "key": key,
        "ct": content_type,
        "ce": encoding,
        "body": base64.b64encode(raw).decode("ascii"),
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def publish(app: Any, payloads: Iterable[bytes]) -> int:
    """Publish handed-back payloads; returns how many went out.

    A payload that fails to publish stays handed back in Redis, and a sweep publishes it
    again after the hand-back deadline: nothing is lost, it only comes later.
    """
    sent = 0
    for payload in payloads:
        try:
            envelope = json.loads(payload)
            body = _loads(
                base64.b64decode(envelope["body"]),
                envelope["ct"],
                envelope["ce"],
                accept={envelope["ct"]},
            )
            options = dict(body["options"])
            headers = dict(options.pop("headers", None) or {})
            headers[HEADER_HANDBACK] = {
                "key": envelope["key"],
                "retries": options.get("retries", 0),
            }
            with _instrument.activity(
                _instrument.PUBLISH,
                task=envelope["task"],
                message_id=envelope["id"],
                destination=options.get("queue"),
                kind="handback",
                deferrals=0,
                delay=0.0,
                cause="release",
            ):
                app.send_task(
                    envelope["task"],
                    args=body["args"],
                    kwargs=body["kwargs"],
                    headers=headers,
                    add_to_parent=False,
                    **options,
                )
            sent += 1
        except Exception:
            logger.exception("could not publish a parked task; a sweep publishes it again later")
    return sent


# ---------------------------------------------------------------- hand-backs


def handback_of(request: Any) -> str | None:
    """The guard key a handed-back message's room was held on, or None.

    A header copied into a later message (``self.retry()`` keeps the headers) names
    another ``retries`` count and is ignored.
    """
    value = (getattr(request, "headers", None) or {}).get(HEADER_HANDBACK)
    if value is None:  # a request rebuilt from the message: headers are its attributes
        value = vars(request).get(HEADER_HANDBACK)
    if not isinstance(value, Mapping):
        return None
    if value.get("retries", 0) != (request.retries or 0):
        return None
    key = value.get("key")
    return key if isinstance(key, str) else None


def claim(backend: Backend, request: Any) -> bool:
    """True if this handed-back message is the copy to run (False: drop it)."""
    parking = parking_for(backend)
    if parking is None:
        return True
    return parking.claim(request.id, handback_of(request))


def drop_revoked(task: Any, request: Any) -> None:
    """A handed-back message discarded unrun (revoked, or expired) never claims its
    ticket; drop the ticket, or a sweep would publish it again after every deadline."""
    key = handback_of(request)
    parking = parking_for(task.taskguard_backend)
    if key is None or parking is None:
        return
    try:
        dropped, payloads = parking.drop(request.id, key)
    except (BackendUnavailable, BackendError) as exc:
        logger.warning("%s[%s]: could not drop its hand-back: %s", task.name, request.id, exc)
        return
    if dropped:
        logger.info("%s[%s] was discarded unrun; its hand-back is dropped", task.name, request.id)
    publish(task.app, payloads)


def handoff_owner(task_id: str) -> str:
    """The owner token a handed-back task's room is held under."""
    return task_id + HANDOFF_OWNER_SUFFIX


def hand_back(app: Any, backend: Backend, keys: Iterable[str]) -> None:
    """After releases that found tasks parked: hand back what the guards have room for."""
    parking = parking_for(backend)
    if parking is None:
        return
    for key in keys:
        try:
            payloads = parking.hand_back(key)
        except (BackendUnavailable, BackendError) as exc:
            logger.warning("could not hand back tasks parked on %s (a sweep will): %s", key, exc)
            continue
        publish(app, payloads)


class Sweeper:
    """A thread in the worker's main process that hands back what no release did.

    Every worker runs one; the sweep script takes each lot and hand-back atomically, so
    they never publish the same hand-back twice within its deadline.
    """

    def __init__(self, app: Any, backend: Backend, interval: float = 0.25) -> None:
        self.app = app
        self.parking = parking_for(backend)
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.parking is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="taskguard-sweeper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def sweep_once(self) -> int:
        """One sweep; returns how many payloads were published."""
        assert self.parking is not None
        return publish(self.app, self.parking.sweep())

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.interval):
            try:
                self.sweep_once()
            except (BackendUnavailable, BackendError) as exc:
                if not failing:
                    logger.warning("parked-task sweep failed (retrying): %s", exc)
                failing = True
            except Exception:
                logger.exception("parked-task sweep failed (retrying)")
            else:
                if failing:
                    logger.info("parked-task sweep works again")
                failing = False
