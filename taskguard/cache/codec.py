"""Value codecs: JSON (default) and msgpack (optional extra). Pickle is never used."""

from __future__ import annotations

import json
from typing import Any, Protocol

from taskguard.errors import ConfigurationError

__all__ = ["CODECS", "Codec", "get_codec"]


class Codec(Protocol):
    """Turns values into bytes and back."""

    name: str

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class JSONCodec:
    """Compact UTF-8 JSON. Values must be JSON-serializable."""

    name = "json"

    def dumps(self, value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


class MsgpackCodec:
    """msgpack (``pip install msgpack``): smaller and faster than JSON for large values."""

    name = "msgpack"

    def __init__(self) -> None:
        try:
            import msgpack
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigurationError(
                "codec 'msgpack' needs the msgpack package: pip install msgpack",
                field="codec",
            ) from exc
        self._msgpack = msgpack

    def dumps(self, value: Any) -> bytes:
        data: bytes = self._msgpack.packb(value, use_bin_type=True)
        return data

    def loads(self, data: bytes) -> Any:
        return self._msgpack.unpackb(data, raw=False)


CODECS = ("json", "msgpack")
_cache: dict[str, Codec] = {}


def get_codec(name: str) -> Codec:
    """The codec called ``name`` (``"json"`` or ``"msgpack"``)."""
    codec = _cache.get(name)
    if codec is None:
        if name == "json":
            codec = JSONCodec()
        elif name == "msgpack":
            codec = MsgpackCodec()
        else:
            raise ConfigurationError(
                f"unknown codec {name!r}: use one of {', '.join(CODECS)} (pickle is never used)",
                field="codec",
            )
        _cache[name] = codec
    return codec
