"""Finding write-behind streams from their keys: the SCAN pattern and the check of each
match against the key schema (no server: SCAN itself runs in the integration tests,
tests/integration/test_drain_discovery.py)."""

from __future__ import annotations

import re

import pytest

from taskguard.drain.discovery import merge, stream_of
from taskguard.keys import KeySchema


def redis_glob(pattern: str) -> re.Pattern[str]:
    """Redis's glob (``*``, ``?``, ``[...]``, backslash escapes) as a regular expression."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


@pytest.mark.parametrize(("prefix", "tag"), [("tg", None), ("app:tg", None), ("a*b?", "x[y]\\")])
def test_the_pattern_matches_every_stream_and_the_check_keeps_only_streams(
    prefix: str, tag: str | None
) -> None:
    try:
        schema = KeySchema(prefix, tag=tag)
    except ValueError:
        pytest.skip(f"the key schema refuses {prefix!r} / {tag!r}: no glob to escape")
    glob = redis_glob(schema.cache_stream_pattern())
    for namespace, partition in (("orders", 0), ("a.b-c_d", 1023), ("x", 7)):
        stream = schema.cache_stream(namespace, partition)
        assert glob.fullmatch(stream)
        assert stream_of(schema, stream) == (namespace, partition)
        assert stream_of(schema, stream.encode()) == (namespace, partition)
    # A cached value whose key ends like a stream: its brace is escaped, so it matches
    # neither the pattern nor the check.
    value = schema.cache_value("orders", 3, "evil:c:orders:3}:wb")
    assert not glob.fullmatch(value)
    assert stream_of(schema, value) is None
    for other in (
        schema.cache_dirty("orders", 0),
        schema.drain_lease("orders", 0),
        schema.dead_letters("orders"),
        KeySchema("other").cache_stream("orders", 0),
    ):
        assert stream_of(schema, other) is None
    assert not glob.fullmatch(KeySchema("other").cache_stream("orders", 0))


def test_merge_adds_partitions() -> None:
    found = {"a": {0}}
    assert merge(found, {"a": {1}, "b": {2}}) == {"a": {0, 1}, "b": {2}}
