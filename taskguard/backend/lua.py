"""Lua scripts: read from ``scripts/*.lua``, run by EVALSHA, reloaded on NOSCRIPT.

A script may include op libraries from ``scripts/lib/``; they are concatenated in front of
it, after a one-line prelude declaring the ``KINDS`` registry they fill in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis

__all__ = ["Script", "load_script"]

_PRELUDE = "local KINDS = {}\n"


class Script:
    """One Lua script, its source and its SHA1.

    Args:
        name: File name without ``.lua`` (for error messages).
        source: The full Lua source.
    """

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def __call__(self, client: redis.Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run the script with EVALSHA, loading it once if the server does not know it."""
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)


def _read(relative: str) -> str:
    return (resources.files("taskguard.backend") / "scripts" / relative).read_text("utf-8")


def load_script(name: str, libs: Sequence[str] = ()) -> Script:
    """Build the script ``scripts/<name>.lua`` with ``scripts/lib/<lib>.lua`` in front."""
    parts = [_PRELUDE, *(_read(f"lib/{lib}.lua") for lib in libs), _read(f"{name}.lua")]
    return Script(name, "\n".join(parts))
