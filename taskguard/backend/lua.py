"""Lua scripts: read from ``scripts/*.lua``, run by EVALSHA, reloaded on NOSCRIPT.

A script may include op libraries from ``scripts/lib/``; they are concatenated in front of
it, after a one-line prelude declaring the ``KINDS`` registry they fill in.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
import redis.asyncio

from .lane import PlainLane

__all__ = ["Script", "load_script"]

_PRELUDE = "local KINDS = {}\n"


class Script:
    """One Lua script: read (once, on first use) from ``scripts/<name>.lua`` with its op
    libraries in front, and run by EVALSHA.

    Args:
        name: File name without ``.lua``.
        libs: Libraries from ``scripts/lib/`` to put in front, in order.
    """

    def __init__(self, name: str, libs: Sequence[str] = (), head: str | None = None) -> None:
        self.name = name
        self.libs = tuple(libs)
        self.head = head

    def __repr__(self) -> str:
        head = f" head={self.head}" if self.head else ""
        return f"<Script {self.name} libs={list(self.libs)}{head}>"

    @functools.cached_property
    def source(self) -> str:
        """The full Lua source (a fast path's head, prelude, libraries, script).

        A head (``scripts/<head>.lua``) runs first and may answer the commonest case
        before any library is defined; whatever it does not answer falls through."""
        parts = [_read(f"{self.head}.lua")] if self.head else []
        parts += [_PRELUDE, *(_read(f"lib/{lib}.lua") for lib in self.libs)]
        return "\n".join([*parts, _read(f"{self.name}.lua")])

    @functools.cached_property
    def sha(self) -> str:
        """The SHA1 EVALSHA runs it by."""
        return hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()

    def __call__(self, client: redis.Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run the script with EVALSHA through ``client``'s own ``evalsha``, loading it once
        if the server does not know it (the hot path sends through a lane instead)."""
        return PlainLane(client).evalsha(self, keys, args)

    async def call_async(
        self, client: redis.asyncio.Redis, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """:meth:`__call__` on an asyncio client: the same EVALSHA, the same reload."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)


def _read(relative: str) -> str:
    return (resources.files("taskguard.backend") / "scripts" / relative).read_text("utf-8")


def load_script(name: str, libs: Sequence[str] = (), head: str | None = None) -> Script:
    """The script ``scripts/<name>.lua`` with ``scripts/lib/<lib>.lua`` in front, and
    ``scripts/<head>.lua`` before all (read lazily)."""
    return Script(name, libs, head)
