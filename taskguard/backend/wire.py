"""What the Redis backends (``RedisBackend`` and ``taskguard.aio``'s) share, free of I/O.

Which script an op list runs and its KEYS/ARGV, how an admission reply reads, how a
redis-py exception becomes taskguard's, the client options, the commands of a breaker's
state and admin actions, and the slices a ``BLPOP`` wait is cut into. Both backends call
these, so a Celery worker and an asyncio service send the same bytes for the same guard.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import redis

from taskguard.errors import BackendError, BackendUnavailable, TaskGuardError
from taskguard.urls import scrub

from .breakers import BREAKER_IDLE_MS, CLOSED_FIELDS, FORCED, effective_state
from .cooldown import CooldownBreaker
from .lua import Script, load_script
from .ops import Admission, BreakerOp, Op, RateOp, granted
from .redis_errors import classify
from .registry import BUCKET_TYPES, kind_of, registered

__all__ = [
    "REDIS_ERRORS",
    "admission_from",
    "admit_call",
    "batch_replies",
    "blpop_slice",
    "blpop_timeout",
    "breaker_read_call",
    "breaker_state_from",
    "client_options",
    "encode",
    "failure",
    "named_script",
    "not_loaded",
    "queue_breaker_action",
    "script_for",
]

#: What a call to Redis can raise; :func:`failure` sorts outages from errors. A Redis
#: Cluster client's own errors (no reachable node, keys in several slots) are no
#: ``RedisError``.
REDIS_ERRORS = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError)

_SCRIPTS: dict[tuple[str, tuple[type, ...]], Script] = {}
_BY_LIBS: dict[tuple[str, tuple[str, ...]], Script] = {}
_NAMED: dict[tuple[str, tuple[str, ...]], Script] = {}
#: Encoded admissions of reused ops (rate-limit ops are built once per bucket and kept):
#: id(op) -> (op, script, KEYS, ARGV after reserve_within). Holding the op keeps its id
#: from being reused while it is cached.
_ENCODED: dict[int, tuple[Op, Script, list[str], list[Any]]] = {}
_ENCODED_MAX = 4096
#: reserve_within (seconds) -> its ARGV, in microseconds, as bytes: a worker passes the
#: same few values on every admission.
_RESERVE: dict[float, bytes] = {}


#: Scripts written out for one op list shape, without lib/ops.lua's framework: the same
#: KEYS, ARGV and reply as the general script (tests/contract/test_admit_rl.py).
_LEAN: dict[tuple[str, tuple[type, ...]], str] = {("admit", (RateOp,)): "admit_rl"}
#: Fast paths run in front of the general script for one op list shape: they answer the
#: commonest case before any library is defined, and leave the rest to the general script
#: (tests/contract/test_breaker_fast.py).
_HEADS: dict[tuple[str, tuple[type, ...]], str] = {
    ("admit", (BreakerOp,)): "fast/breaker_admit",
    ("release", (BreakerOp,)): "fast/breaker_release",
}


def script_for(name: str, ops: Sequence[Op]) -> Script:
    """``name``.lua with only the libraries its ops' kinds need: less Lua set up per call.
    A lone rate limit's admission runs ``admit_rl.lua``, which needs none; a lone
    breaker's admission and release have a fast path in front (``scripts/fast/``)."""
    types = (type(ops[0]),) if len(ops) == 1 else tuple(type(op) for op in ops)
    script = _SCRIPTS.get((name, types))
    if script is None:
        if (lean := _LEAN.get((name, types))) is not None:
            script = _SCRIPTS[name, types] = named_script(lean, ())
            return script
        needed = {kind_of(op).lib for op in ops}
        # Once each, in registration order (a library may register several kinds).
        libs = tuple(dict.fromkeys(kind.lib for kind in registered() if kind.lib in needed))
        if (head := _HEADS.get((name, types))) is not None:
            script = load_script(name, ["ops", *libs], head)
        else:
            script = _BY_LIBS.get((name, libs))
            if script is None:
                script = _BY_LIBS[name, libs] = load_script(name, libs=["ops", *libs])
        _SCRIPTS[name, types] = script
    return script


def named_script(name: str, libs: Sequence[str]) -> Script:
    """``scripts/<name>.lua`` with ``libs`` in front, built once per process."""
    script = _NAMED.get((name, tuple(libs)))
    if script is None:
        script = _NAMED[name, tuple(libs)] = load_script(name, libs=libs)
    return script


def encode(ops: Sequence[Op], *, release: bool) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for lib/ops.lua: n, then per op its kind's code, nkeys, argc, args."""
    if len(ops) == 1:  # the common single guard, without the loop's bookkeeping
        kind = kind_of(ops[0])
        keys, op_args = kind.encode(ops[0], release)
        return keys, [*_header(kind.code, len(keys), len(op_args)), *op_args]
    keys = []
    args: list[Any] = [len(ops)]
    for op in ops:
        kind = kind_of(op)
        op_keys, op_args = kind.encode(op, release)
        keys += op_keys
        args.append(kind.code)
        args.append(len(op_keys))
        args.append(len(op_args))
        args += op_args
    return keys, args


_HEADERS: dict[tuple[str, int, int], tuple[bytes, ...]] = {}


def _header(code: str, nkeys: int, argc: int) -> tuple[bytes, ...]:
    """ARGV ``1, code, nkeys, argc`` of a one-op list, as bytes: built once per shape, and
    the client sends bytes as they are (where it converts every int and str per call)."""
    header = _HEADERS.get((code, nkeys, argc))
    if header is None:
        header = _HEADERS[code, nkeys, argc] = tuple(
            str(part).encode() for part in (1, code, nkeys, argc)
        )
    return header


def admit_call(ops: Sequence[Op], reserve_within: float) -> tuple[Script, list[str], list[Any]]:
    """The script, KEYS and ARGV admitting ``ops`` (``ops`` must not be empty)."""
    reserve_us = _RESERVE.get(reserve_within) or _reserve_arg(reserve_within)
    if len(ops) == 1:
        op = ops[0]
        cached = _ENCODED.get(id(op))
        if cached is not None and cached[0] is op:
            return cached[1], cached[2], [reserve_us, *cached[3]]
        keys, args = encode(ops, release=False)
        script = script_for("admit", ops)
        if type(op) in BUCKET_TYPES:  # built once per bucket and reused: keep its encoding
            if len(_ENCODED) >= _ENCODED_MAX:
                _ENCODED.clear()
            # As bytes: sent as they are, where every int and str is encoded per call.
            args = [_as_bytes(arg) for arg in args]
            _ENCODED[id(op)] = (op, script, keys, args)
        return script, keys, [reserve_us, *args]
    keys, args = encode(ops, release=False)
    return script_for("admit", ops), keys, [reserve_us, *args]


def _reserve_arg(reserve_within: float) -> bytes:
    arg = b"%d" % int(reserve_within * 1_000_000) if reserve_within else b"0"
    if len(_RESERVE) < 64:
        _RESERVE[reserve_within] = arg
    return arg


def _as_bytes(arg: Any) -> Any:
    """An ARGV value as redis-py would send it (UTF-8, ``repr`` of a number), as bytes."""
    if type(arg) is str:
        return arg.encode()
    if type(arg) is int or type(arg) is float:
        return repr(arg).encode()
    return arg


def admission_from(ops: Sequence[Op], reply: Sequence[Any]) -> Admission:
    """The :class:`Admission` that ``admit.lua``'s ``reply`` reports for ``ops``."""
    if not reply[0]:
        return Admission(False, reply[1] / 1_000_000, reply[2] - 1, bool(reply[3]), 0)
    if len(ops) == 1:  # the common single guard: no slice, no loop
        if type(ops[0]) in BUCKET_TYPES:
            return Admission(True, 0.0, None, False, reply[4], (0,))
        return Admission(True, 0.0, None, False, -1, (reply[4],))
    return granted(ops, reply[4 : 4 + len(ops)])


def failure(
    exc: BaseException, what: str, secrets: tuple[str, ...], breaker: CooldownBreaker
) -> TaskGuardError:
    """The taskguard error for ``exc``; an outage opens ``breaker``.

    Only outages (see :mod:`.redis_errors`) become :class:`BackendUnavailable`, for the
    outage policies to decide; anything else is a :class:`BackendError`. ``secrets`` are
    taken out of the error text.
    """
    found = classify(exc)
    text = scrub(found.text, secrets)
    if found.kind == "error":
        return BackendError(f"redis error during {what}: {text}", code=found.code, what=what)
    if found.kind == "refused":  # answering, so no fail-fast: each call tries again
        return BackendUnavailable(f"redis refuses writes during {what}: {text}", code=found.code)
    cooldown = breaker.record_failure()
    state = "unreachable" if found.code is None else "unavailable"
    return BackendUnavailable(
        f"redis {state} during {what}: {text}", retry_after=cooldown, code=found.code
    )


def client_options(
    socket_timeout: float,
    socket_connect_timeout: float,
    retry: object,
    redis_options: dict[str, Any] | None,
) -> dict[str, Any]:
    """The client's keyword arguments: short timeouts, one quick retry, no health checks.

    ``retry`` is redis-py's ``Retry(NoBackoff(), 1)``, of the sync or the asyncio kind.
    """
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
        # One quick retry heals a pooled connection broken by a server restart;
        # anything more would turn an outage into seconds of waiting per task.
        "retry": retry,
        "health_check_interval": 0,
        **(redis_options or {}),
    }


def not_loaded(replies: Sequence[Any]) -> list[int]:
    """The indices of a script pipeline's replies that are ``NOSCRIPT`` refusals.

    On one server these are all or none. On Redis Cluster only the calls sent to nodes
    that lack the script refused, and the others ran: only the refused ones may be sent
    again (resending the batch would run the others twice)."""
    return [
        i for i, reply in enumerate(replies) if isinstance(reply, redis.exceptions.NoScriptError)
    ]


def batch_replies(replies: list[Any], resent: Sequence[int], again: Sequence[Any]) -> list[Any]:
    """``replies`` with the replies of the ``resent`` calls replaced by ``again``; the first
    error among them is raised (each call of a batch is atomic, the batch is not)."""
    for index, reply in zip(resent, again, strict=True):
        replies[index] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def breaker_read_call(op: BreakerOp) -> tuple[Script, list[str], list[Any]]:
    """The script, KEYS and ARGV reading breaker ``op``'s state and the server's time
    (``breaker_read.lua``; :func:`breaker_state_from` reads its reply)."""
    return named_script("breaker_read", ()), [op.key], []


def breaker_state_from(reply: Sequence[Any]) -> str:
    """The effective breaker state from the reply of :func:`breaker_read_call`."""
    seconds, micros, *fields = [*reply, None, None, None][:5]
    state, until, forced = fields
    return effective_state(state, until, forced, seconds * 1000 + micros // 1000)


def queue_breaker_action(pipe: Any, op: BreakerOp, action: str) -> None:
    """Queue on ``pipe`` (a MULTI pipeline) the commands of an admin ``action``."""
    if action == "reset":
        pipe.delete(op.key, op.window_key, op.probes_key)
    elif action == "force_close":
        pipe.delete(op.window_key, op.probes_key)
        pipe.hset(op.key, items=[x for pair in CLOSED_FIELDS.items() for x in pair])
    else:
        pipe.hset(op.key, "forced", FORCED[action])
    pipe.pexpire(op.key, BREAKER_IDLE_MS)


def blpop_slice(socket_timeout: float) -> float:
    """The longest one ``BLPOP`` of a wait may block, so a wait never looks like a dead
    server: 80 % of the socket timeout, and 0.2 s less than it at least. Redis notices a
    blocked client's timeout at its next ``hz`` tick (up to 100 ms late at the default
    ``hz 10``; a 0.4 s ``BLPOP`` was seen to return after 0.493 s), and the reply must
    still cross back before the client's read gives up."""
    return max(min(socket_timeout * 0.8, socket_timeout - 0.2), 0.05)


def blpop_timeout(left: float, slice_: float) -> float:
    """The ``BLPOP`` timeout for a wait with ``left`` seconds to go."""
    # Redis 6.2 reads a timeout under 1 ms as 0, "block forever": never ask for it.
    return max(math.ceil(min(left, slice_) * 1000) / 1000, 0.01)
