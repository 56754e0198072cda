"""What every guard shares: the spec base class, the decision, and the outage policies."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Protocol, TypeVar

from taskguard._validate import choice
from taskguard.backend.base import Backend
from taskguard.backend.ops import Op
from taskguard.errors import BackendUnavailable, ConfigurationError, GuardDenied
from taskguard.keys import KeySchema

__all__ = [
    "DEFER",
    "OUTAGE_POLICIES",
    "Decision",
    "Guard",
    "RunContext",
    "Verdict",
    "check_outage_policy",
    "guard_classes",
]

G = TypeVar("G", bound="Guard")

#: What a guard does while its backend is unreachable.
#: ``allow``: let the call through; ``deny``: refuse (a task defers); ``local``: enforce
#: the guard in this process only.
OUTAGE_POLICIES = ("allow", "deny", "local")


def check_outage_policy(value: object, *, field: str = "on_outage") -> str:
    """Return ``value`` if it names an outage policy, else raise ConfigurationError."""
    return choice(value, field, OUTAGE_POLICIES)


@dataclass(frozen=True, init=False)
class Decision:
    """The answer of a ``try_acquire()``.

    It is truthy when allowed, and a context manager that releases what was acquired (a
    lock's lease; nothing for a rate limit), so ``with limiter.acquire():`` reads naturally.

    Attributes:
        allowed: Whether the call may proceed.
        retry_after: Seconds after which asking again can succeed (0 when allowed).
        remaining: Tokens left in the bucket after this call (-1 if not applicable).
        key: The resolved guard key.
        degraded: True when the backend was unreachable and the outage policy decided.
        token: A lock's fencing token, when one was acquired.
        lease: What to release, when the guard holds something (a lock).
    """

    allowed: bool
    retry_after: float = 0.0
    remaining: int = -1
    key: str | None = None
    degraded: bool = False
    token: int | None = None
    lease: Releasable | None = None

    def __init__(  # noqa: PLR0917 - the dataclass's signature: positional as before
        self,
        allowed: bool,
        retry_after: float = 0.0,
        remaining: int = -1,
        key: str | None = None,
        degraded: bool = False,
        token: int | None = None,
        lease: Releasable | None = None,
    ) -> None:
        # Built once per decision on every hot path: one dict write per field, where the
        # generated frozen __init__ pays an object.__setattr__ call for each.
        fields = self.__dict__
        fields["allowed"] = allowed
        fields["retry_after"] = retry_after
        fields["remaining"] = remaining
        fields["key"] = key
        fields["degraded"] = degraded
        fields["token"] = token
        fields["lease"] = lease

    def __bool__(self) -> bool:
        return self.allowed

    def __enter__(self) -> Decision:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.lease is not None:
            self.lease.release_after(exc)


class Releasable(Protocol):
    """Something held that can be given back."""

    def release(self) -> bool:
        """Give it back; False if it was no longer ours."""
        ...

    def release_after(self, exc: BaseException | None) -> None:
        """Give it back at the end of a ``with`` block that raised ``exc`` (or None)."""
        ...


@dataclass(frozen=True)
class RunContext:
    """What a guard's hooks know of the task run they are called for (no Celery types).

    Attributes:
        sender: The task (the sender of the signals a hook sends).
        task_id: The run's task id.
        backend: The backend the run is admitted on.
    """

    sender: Any
    task_id: str
    backend: Backend


@dataclass(frozen=True)
class Verdict:
    """What a task run does after a guard refused it (see :meth:`Guard.on_denied`).

    Attributes:
        action: ``"defer"`` (re-publish for later), ``"skip"`` (drop this run, freeing
            its publish-time claims), ``"duplicate"`` (drop it as a duplicate, keeping the
            claims: they belong to the original) or ``"fail"`` (raise the guard's error).
        reason: Why, for the log and the ``Ignore`` message of a skip.
        headers: With ``defer``: headers added to the deferred message.
        meta: With ``superseded`` (drop the run, its result state ``SUPERSEDED`` with
            this meta): what superseded it.
    """

    action: str
    reason: str = ""
    headers: Mapping[str, Any] | None = None
    meta: Mapping[str, Any] | None = None


DEFER = Verdict("defer")


_GUARD_CLASSES: dict[str, type[Guard]] = {}


def guard_classes() -> dict[str, type[Guard]]:
    """Every guard class by kind (each registers itself when it is defined)."""
    return dict(_GUARD_CLASSES)


class Guard(ABC):
    """A guard specification: an immutable value saying *what* to enforce.

    Subclasses implement :meth:`task_ops` (turn one task run into backend ops) and
    :meth:`denied_error`. Specs validate their own fields on construction and raise
    :class:`ConfigurationError` naming the field; :meth:`bind` adds the task context.
    """

    #: The guard's kind: its name in settings (``"lock"``) and in outage maps.
    kind: ClassVar[str]
    #: Where this kind is checked in a task's admission, lowest first (breaker 0, lock 10,
    #: concurrency 20, rate limit 30): the first refusal reported decides how a task waits.
    admission_rank: ClassVar[int] = 50
    #: The arguments a per-task settings entry ``{kind: {...}}`` may give; None when the
    #: settings layer parses this kind itself (rate limits, breakers).
    settings_fields: ClassVar[frozenset[str] | None] = None
    #: The argument a bare (non-mapping) settings value sets (``"concurrency": 3``).
    settings_bare: ClassVar[str | None] = None
    on_outage: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if isinstance(kind, str):
            _GUARD_CLASSES[kind] = cls

    #: Seconds a denied task waits in the worker (woken by a release) before deferring.
    wait: float = 0.0

    #: True for a guard whose ops record the run's outcome at release (a breaker).
    records_outcome: ClassVar[bool] = False
    #: True for a guard whose ops depend on the message (see :meth:`for_request`).
    reads_request: ClassVar[bool] = False

    def for_request(self, op: Op, request: Any) -> Op:
        """Hook (when :attr:`reads_request`): ``op`` adjusted for the task message being
        run (its headers, id, eagerness)."""
        return op

    def conflict_delay(self, retry_after: float) -> float:
        """How long to defer a task this guard refused, given the backend's estimate."""
        return retry_after

    def on_admitted(self, op: Op, token: int, run: RunContext) -> bool:
        """Hook: ``op`` of this guard was admitted for ``run`` with admission value ``token``.

        Returns True when the op must be renewed by the heartbeat while the run lasts
        although its kind does not hold it (a breaker's half-open probe).
        """
        return False

    def on_denied(self, op: Op, retry_after: float, run: RunContext) -> Verdict:
        """Hook: this guard's ``op`` refused ``run`` (backend reachable); what to do."""
        return DEFER

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _set(self, **fields: object) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    #: Constructor arguments shown without a name in ``repr`` (and needed to build one).
    _positional: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def _fields(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this spec."""

    def __repr__(self) -> str:
        fields = self._fields()
        defaults = type(self)(*(fields[n] for n in self._positional))._fields()
        shown = [repr(fields[n]) for n in self._positional]
        shown += [
            f"{k}={v!r}"
            for k, v in fields.items()
            if k not in self._positional and v != defaults[k]
        ]
        return f"{type(self).__name__}({', '.join(shown)})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))

    def replace(self: G, **changes: Any) -> G:
        """A copy with some fields changed (validated like a new spec)."""
        return type(self)(**{**self._fields(), **changes})

    def bind(self: G, task_name: str, signature: inspect.Signature | None) -> G:
        """Return a copy of this spec ready for ``task_name``.

        Validates what depends on the task (a key template naming a missing argument)
        and fills in task-dependent defaults (the name, from the task's).

        Raises:
            ConfigurationError: Naming the task and the field.
        """
        key = getattr(self, "key", None)
        if key is not None:
            try:
                key.validate(signature)
            except ConfigurationError as exc:
                raise ConfigurationError(
                    exc.reason, task=task_name, field=self._key_field
                ) from None
        tag = getattr(self, "tag", None)
        if tag is not None:
            try:
                tag.validate(signature)
            except ConfigurationError as exc:
                field = self._key_field.replace("key", "tag")
                raise ConfigurationError(exc.reason, task=task_name, field=field) from None
        bound = self.replace(name=getattr(self, "name", None) or task_name)
        object.__setattr__(bound, "_signature", signature)
        return bound

    #: The setting a bad key template is reported under.
    _key_field: ClassVar[str] = "key"

    @abstractmethod
    def task_ops(
        self, keys: KeySchema, args: Sequence[Any], kwargs: Mapping[str, Any], task_id: str
    ) -> list[Op]:
        """The backend ops admitting one task run with these arguments."""

    def bucket(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
        """The key this guard uses for one call (None: one key for all calls)."""
        return None

    def tag_for(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
        """The hash-tag source of one call (the ``tag`` option), or None: the key's own.
        Only a spread key schema (Redis Cluster) reads it."""
        tag = getattr(self, "tag", None)
        if tag is None or tag.source is None:
            return None
        return tag.render(args, kwargs, getattr(self, "_signature", None))  # type: ignore[no-any-return]

    @abstractmethod
    def denied_error(self, retry_after: float, key: str | None = None) -> GuardDenied:
        """The exception describing a denial by this guard."""

    def refusal(
        self, retry_after: float, key: str | None, degraded: bool
    ) -> GuardDenied | BackendUnavailable:
        """What a refused standalone call (``acquire``) raises: ``BackendUnavailable`` when
        the backend was unreachable and ``on_outage`` is ``deny``, else :meth:`denied_error`
        (shared by the sync and the asyncio façades)."""
        if degraded and self.on_outage == "deny":
            return BackendUnavailable(
                f"{self!r}: backend unreachable and on_outage='deny'", retry_after=retry_after
            )
        return self.denied_error(retry_after, key)
