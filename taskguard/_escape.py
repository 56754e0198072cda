"""Escaping user strings for key names (:mod:`taskguard.keys`): percent-escapes, never
replacements, so the key schema stays injective; and literals in SCAN patterns."""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["glob", "key", "part", "unescape"]

_PART_SPECIAL = re.compile(r"[%:{}]")
_KEY_SPECIAL = re.compile(r"[%{}]")
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def _percent(char: str) -> str:
    # surrogatepass: a lone surrogate is escaped too, rather than failing in the driver.
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))


def _escape(text: object, special: re.Pattern[str], field: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{field} must be a str, got {type(text).__name__} {text!r}")
    if text.isprintable() and special.search(text) is None:
        return text  # the usual case: nothing to escape
    return "".join(c if c.isprintable() and not special.match(c) else _percent(c) for c in text)


def part(text: object, field: str) -> str:
    """A name, tag or namespace: escaped so that it holds no ``:``, ``{`` or ``}``."""
    return _escape(text, _PART_SPECIAL, field)


def key(text: object) -> str:
    """A key (always the last part): escaped so that it holds no ``{`` or ``}``."""
    return _escape(text, _KEY_SPECIAL, "key")


def unescape(text: str) -> str:
    """Undo :func:`_escape` (every ``%`` in an escaped string starts a ``%XX`` byte)."""
    return unquote(text, errors="surrogatepass") if "%" in text else text


def glob(text: str) -> str:
    """``text`` as a literal in a Redis SCAN/KEYS pattern."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)
