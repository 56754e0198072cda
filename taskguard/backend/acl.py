"""Can the configured Redis user run what taskguard needs? Checked once, at worker start.

A user without ``EVALSHA``, without access to the keys under the prefix, or without a
command a script calls would otherwise fail every admission with ``NOPERM``. Two round
trips find out first: ``SCRIPT LOAD`` and ``EVALSHA`` of the probe script
``acl_probe.lua`` (which tries every command the scripts and the port send, on keys and a
channel under the prefix), then ``BLPOP`` inside ``MULTI``/``EXEC`` (a blocking command
cannot run in a script; the transaction is used by the breaker's admin controls).
docs/security.md has the least-privilege ACL line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import redis

from taskguard.errors import BackendError

from .lua import load_script
from .redis import RedisBackend
from .redis_errors import classify

__all__ = ["ACL_CATEGORIES", "acl_rules", "missing_permissions"]

#: The commands the least-privilege user needs (docs/security.md). ``@transaction`` is
#: for the breaker's admin controls (MULTI/EXEC); ``TIME`` belongs to none of these
#: categories, so it is granted by name.
ACL_CATEGORIES = (
    "+@read +@write +@scripting +@stream +@pubsub +@blocking +@keyspace +@connection "
    "+@transaction +time -@dangerous"
)


def acl_rules(prefix: str, *, cluster: bool = False) -> list[str]:
    """The ``ACL SETUSER`` rules of the least-privilege user for keys under ``prefix``.

    ``resetchannels`` comes first: Redis 6.2 gives a new user every channel
    (``acl-pubsub-default allchannels``) and then refuses a channel pattern. On Redis
    Cluster (``cluster=True``) the client also reads the slot map (``CLUSTER SLOTS``);
    set the user on every node.

    Example:
        >>> " ".join(acl_rules("tg"))[:40]
        'resetchannels ~tg:* &tg:* +@read +@write'
        >>> acl_rules("tg", cluster=True)[-1]
        '+cluster|slots'
    """
    rules = ["resetchannels", f"~{prefix}:*", f"&{prefix}:*", *ACL_CATEGORIES.split()]
    return [*rules, "+cluster|slots"] if cluster else rules


def missing_permissions(backend: RedisBackend, *, streams: bool = False) -> list[str]:
    """What the backend's Redis user may not do, as ``"COMMAND: the server's error"``.

    Args:
        backend: The Redis backend, with the user and prefix taskguard will use.
        streams: Also try the stream commands of write-behind and the drain pool.

    Returns:
        An empty list when everything is allowed.

    Raises:
        BackendUnavailable: Redis could not be reached (an outage, not a permission).

    Example:
        >>> missing_permissions(taskguard.connect(url).backend)  # doctest: +SKIP
        ["EVALSHA: NOPERM this user has no permissions to run the 'evalsha' command"]
    """
    # One slot for every probe key and the channel, on a spread schema too (Cluster):
    # the probe's keys are the schema's own, unkeyed.
    keys = dataclasses.replace(backend.keys, spread=False)
    names = [keys.guard("aclprobe", "probe", part) for part in ("s", "h", "z", "l", "x")]
    # The channel is in the probe keys' slot: on Redis Cluster the script SPUBLISHes.
    channel = keys.guard("aclprobe", "channel")
    args = ["1" if streams else "0", channel, keys.pattern(), backend.publish_command()]
    script = load_script("acl_probe")
    try:
        with backend.commands("the ACL probe") as client:
            # SCRIPT LOAD every time: the scripts may be cached already, and still be
            # lost by a restart, when the user must load them again.
            if backend.topology == "cluster":
                # A cluster pipeline cannot carry SCRIPT LOAD (it goes to every master).
                loaded = _refusal(lambda: client.script_load(script.source))
                refused = _refusal(lambda: client.evalsha(script.sha, len(names), *names, *args))
            else:
                pipe = client.pipeline(transaction=False)
                pipe.script_load(script.source)
                pipe.evalsha(script.sha, len(names), *names, *args)
                loaded, refused = pipe.execute(raise_on_error=False)
    except BackendError as exc:  # at connect: a wrong password, a disabled user
        return [f"authentication: {exc.reason.partition(': ')[2]}"]
    missing = []
    if isinstance(loaded, Exception):
        missing.append(f"SCRIPT LOAD: {classify(loaded).text}")
    if isinstance(refused, Exception):
        # The script did not run: no EVALSHA, or no access to its keys (the prefix's);
        # NOSCRIPT only follows from a refused SCRIPT LOAD.
        if not isinstance(refused, redis.exceptions.NoScriptError):
            missing.append(f"EVALSHA on keys like {names[0]}: {classify(refused).text}")
        refused = []
    missing += [_text(line).replace("\t", ": ", 1) for line in refused]
    try:
        with backend.commands("the ACL probe (MULTI, BLPOP)") as client:
            pipe = client.pipeline(transaction=True)
            pipe.blpop([names[3]], timeout=0.01)  # the script left it an element
            pipe.execute()
    except BackendError as exc:
        missing.append(f"MULTI/EXEC with BLPOP: {exc.reason.partition(': ')[2]}")
    return missing


def _refusal(call: Callable[[], Any]) -> Any:
    """``call()``'s reply, or the server's refusal (a ``ResponseError``) as the reply, as a
    pipeline with ``raise_on_error=False`` gives it."""
    try:
        return call()
    except redis.exceptions.ResponseError as exc:
        return exc


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
