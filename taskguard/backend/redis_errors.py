"""Which Redis errors are outages: the one place that sorts redis-py's exceptions.

Only what passes by itself is an outage, decided by the guards' outage policies:

- ``outage``: a connection lost or refused, a timeout, no reachable Redis Cluster node or
  no master for a slot (a cluster in failover), a Sentinel that knows no master, and the
  server states ``LOADING``,
  ``READONLY``, ``MASTERDOWN``, ``TRYAGAIN``, ``CLUSTERDOWN``, ``BUSY``, ``NOREPLICAS``,
  ``UNBLOCKED``. Raised as ``BackendUnavailable``; the outage breaker opens.
- ``refused``: ``OOM`` and ``MISCONF``, a server that answers but refuses writes. Raised
  as ``BackendUnavailable`` with ``code`` set; the breaker stays closed (reads still work,
  and the next write may succeed).
- ``error``: everything else (``NOPERM``, ``WRONGPASS``/``NOAUTH``, a script error, an
  unknown command, ``WRONGTYPE``, a protocol error). Raised as ``BackendError``: it fails
  loudly, and no outage policy lets work through unguarded.

Redis 6.2 wraps the error of a command called from a script in ``ERR Error running
script ...: -READONLY ...``; the inner code decides. Redis 7 passes it on as the reply's
own code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import redis

__all__ = ["Classified", "classify"]

Kind = Literal["outage", "refused", "error"]

#: Error codes of a server state that passes by itself (loading, failover, cluster churn).
OUTAGE_CODES = frozenset(
    {"LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY", "NOREPLICAS"}
    | {"UNBLOCKED"}
)
#: Error codes of a server that answers but will not write (memory full, disk failing).
REFUSED_CODES = frozenset({"OOM", "MISCONF"})

_E = redis.exceptions
# Classes whose message redis-py strips of its code; older redis-py lacks some of them.
_CLASS_CODES: tuple[tuple[type[BaseException], str], ...] = tuple(
    (cls, code)
    for name, code in (
        ("NoPermissionError", "NOPERM"),
        ("OutOfMemoryError", "OOM"),
        ("ReadOnlyError", "READONLY"),
        ("BusyLoadingError", "LOADING"),
        ("MasterDownError", "MASTERDOWN"),
        ("TryAgainError", "TRYAGAIN"),
        ("ClusterDownError", "CLUSTERDOWN"),
        ("ClusterCrossSlotError", "CROSSSLOT"),
        ("ExecAbortError", "EXECABORT"),
        ("NoScriptError", "NOSCRIPT"),
        ("MovedError", "MOVED"),
        ("AskError", "ASK"),
    )
    if isinstance(cls := getattr(_E, name, None), type)
)
_AUTH_ERRORS: tuple[type[BaseException], ...] = tuple(
    cls
    for name in (
        "AuthenticationError",
        "AuthenticationWrongNumberOfArgsError",
        "AuthorizationError",
        "ExternalAuthProviderError",
    )
    if isinstance(cls := getattr(_E, name, None), type)
)
# Redis Cluster clients raise these (not RedisError subclasses) when no node answers or a
# slot has no master: a cluster in failover or down. A key-routing mistake (keys of one
# call in several slots) is a RedisClusterException too, and stays an error.
_CLUSTER_OUTAGES: tuple[type[BaseException], ...] = tuple(
    cls
    for name in ("RedisClusterUnreachableError", "SlotNotCoveredError")
    if isinstance(cls := getattr(_E, name, None), type)
)
_CODE = re.compile(r"[A-Z][A-Z_]+")
# Redis 6.2 wraps the error of a command a script called: "ERR Error running script (call
# to f_...): @user_script:1: @user_script: 1: -OOM command not allowed ..." or "...
# @user_script:1: WRONGTYPE Operation against a key ...". The last such code counts.
_INNER_CODE = re.compile(r"@user_script: ?\d+: -?([A-Z][A-Z_]+) ")


@dataclass(frozen=True, slots=True)
class Classified:
    """What a redis-py exception means for taskguard.

    Attributes:
        kind: ``outage``, ``refused`` or ``error`` (see the module docstring).
        code: The Redis error code, or ``None`` (a lost connection, a client-side error).
        text: The error as the server sent it, code first.
    """

    kind: Kind
    code: str | None
    text: str


def classify(exc: BaseException) -> Classified:
    """Sort ``exc`` (a redis-py exception or an ``OSError``) into outage, refused or error.

    Example:
        >>> from redis._parsers import BaseParser
        >>> classify(BaseParser.parse_error("NOPERM no permissions to run 'evalsha'"))
        Classified(kind='error', code='NOPERM', text="NOPERM no permissions to run 'evalsha'")
        >>> classify(ConnectionRefusedError(111, "Connection refused")).kind
        'outage'
    """
    message = str(exc)
    code = _code_of(exc, message)
    text = message if code is None or message.startswith(code) else f"{code} {message}"
    if isinstance(exc, _AUTH_ERRORS):
        return Classified("error", code or "AUTH", text)
    if code == "ERR" and (inner := _INNER_CODE.findall(message)):
        code = inner[-1]
    if code in OUTAGE_CODES:
        return Classified("outage", code, text)
    if code in REFUSED_CODES:
        return Classified("refused", code, text)
    if isinstance(exc, _E.ResponseError):
        return Classified("error", code, text)
    if isinstance(exc, (_E.ConnectionError, _E.TimeoutError, _E.ClusterError, OSError)):
        return Classified("outage", None, text)
    if isinstance(exc, _CLUSTER_OUTAGES):  # no node reachable, a slot no node serves
        return Classified("outage", None, text)
    # DataError, InvalidResponse (not a Redis server), PubSubError...: not an outage.
    return Classified("error", code, text)


def _code_of(exc: BaseException, message: str) -> str | None:
    status = getattr(exc, "status_code", None)  # redis-py >= 6 keeps the code here
    if isinstance(status, str) and status:
        return status
    for cls, code in _CLASS_CODES:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, _E.ResponseError):
        first = message.split(" ", 1)[0]
        if _CODE.fullmatch(first):
            return first
        return "ERR"  # redis-py < 6 strips nothing else but ERR's own code
    return None
