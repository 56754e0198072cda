"""A spread key schema (Redis Cluster): keyed guard state takes its key's hash tag, stays
injective and escape-safe, and the SCAN patterns still find it (issue 14, part 2).

The format (docs/design.md, "Key schema"): ``<prefix>:{<tag>:k:<source>}:<kind>:<name>:<key>``
where the source is the key, or the guard's ``tag`` when it names one, escaped like a
name; unkeyed guard state keeps ``<prefix>:{<tag>}:...`` exactly as without spreading.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskguard import Concurrency, Lock, RateLimit
from taskguard.backend.spread_limits import RemoteLimits
from taskguard.errors import ConfigurationError
from taskguard.keys import KeySchema

from .test_keys import _KINDS, _redis_glob, any_schema, part, tail, user_text

#: The guard methods taking a key (and so a tag source on a spread schema).
KEYED = ["rate_limit", "lock", "fence", "wakeup", "slots", "slot_wakeup", "unique"]

spread_calls = st.tuples(
    any_schema,
    st.sampled_from(KEYED),
    user_text,
    user_text,
    st.one_of(st.none(), user_text),
)


def spread_key(call: Any) -> str:
    (prefix, tag), method, name, key, source = call
    schema = KeySchema(prefix, tag, spread=True)
    return str(getattr(schema, method)(name, key, tag=source))


def decode_spread(key: str) -> tuple[Any, ...]:
    """``((prefix, tag), method, name, key, source)`` from the documented format only."""
    match = re.fullmatch(r"([^{]*):\{([^:}]*):k:([^:}]*)\}:([^:]*):([^:]*):(.*)", key, re.DOTALL)
    assert match, key
    prefix, tag, source, kind, name, user_key = match.groups()
    return (prefix, part(tag)), _KINDS[kind], part(name), tail(user_key), part(source)


@given(spread_calls)
def test_a_spread_key_decodes_back_to_its_call(call: Any) -> None:
    (prefix, tag), method, name, key, source = call
    decoded = decode_spread(spread_key(call))
    expected_tag = prefix if tag is None else tag
    assert decoded == ((prefix, expected_tag), method, name, key, key if source is None else source)


@given(st.lists(spread_calls, min_size=2, max_size=30))
def test_distinct_spread_calls_build_distinct_keys(batch: list[Any]) -> None:
    seen: dict[str, tuple[Any, ...]] = {}
    for call in batch:
        (prefix, tag), method, name, key, source = call
        identity = ((prefix, tag or prefix), method, name, key, key if source is None else source)
        assert seen.setdefault(spread_key(call), identity) == identity


@given(spread_calls)
def test_user_strings_never_open_or_close_a_spread_hash_tag(call: Any) -> None:
    key = spread_key(call)
    assert key.count("{") == 1
    assert key.count("}") == 1
    assert key.index("{") < key.index("}")


@given(any_schema, st.sampled_from(KEYED), user_text)
def test_unkeyed_guard_state_keeps_its_key(schema: Any, method: str, name: str) -> None:
    prefix, tag = schema
    spread = getattr(KeySchema(prefix, tag, spread=True), method)(name)
    assert spread == getattr(KeySchema(prefix, tag), method)(name)
    assert KeySchema(prefix, tag, spread=True).shared(spread)


@given(spread_calls)
def test_guard_parts_and_the_patterns_find_spread_keys(call: Any) -> None:
    (prefix, tag), method, name, key, _ = call
    schema = KeySchema(prefix, tag, spread=True)
    built = spread_key(call)
    kind = next(code for code, m in _KINDS.items() if m == method)
    assert schema.guard_parts(built) == (kind, name, key)
    assert _redis_glob(schema.guard_pattern()).fullmatch(built)
    assert _redis_glob(schema.pattern()).fullmatch(built)
    assert not schema.shared(built)
    # Not another schema's, and never a cache key.
    other = KeySchema(prefix + "x", tag, spread=True)
    assert not _redis_glob(other.guard_pattern()).fullmatch(built)
    assert not _redis_glob(schema.guard_pattern()).fullmatch(schema.cache_value("n", 0, key))
    assert _redis_glob(schema.guard_pattern()).fullmatch(schema.breaker(name))


def test_the_same_key_or_tag_gives_the_same_hash_tag() -> None:
    keys = KeySchema("tg", spread=True)
    assert keys.rate_limit("api", "42") == "tg:{tg:k:42}:rl:api:42"
    assert keys.lock("doc", "d-7", tag="42") == "tg:{tg:k:42}:lock:doc:d-7"
    assert keys.slots("cap", "tenant:7") == "tg:{tg:k:tenant%3A7}:slots:cap:tenant:7"
    assert keys.sibling(keys.lock("doc", "d-7", tag="42"), "fence") == keys.fence(
        "doc", "d-7", tag="42"
    )
    # One server and Sentinel: a tag changes nothing.
    assert KeySchema("tg").lock("doc", "d-7", tag="42") == "tg:{tg}:lock:doc:d-7"


def test_a_spread_keyed_guard_parks_under_its_own_tag() -> None:
    keys = KeySchema("tg", spread=True)
    slots = keys.slots("cap", "7")
    assert keys.park_lot(slots) == "tg:{tg:k:7}:park:slots:cap:7"
    assert keys.park_fair(slots) == "tg:{tg:k:7}:parkfair:slots:cap:7"
    assert keys.park_guard_key(keys.park_lot(slots)) == slots
    assert keys.park_due(slots) == "tg:{tg:k:7}:parkdue"
    assert keys.park_messages(keys.park_due(slots)) == "tg:{tg:k:7}:parkmsg"
    assert keys.park_due() == "tg:{tg}:parkdue"  # the unkeyed guards' index, as before
    assert keys.park_heads() == "tg:{tg}:parkheads"
    with pytest.raises(ValueError, match="not a guard key"):
        keys.park_lot("other:{x}:slots:cap:7")
    op = Concurrency(2, key="{t}", name="cap").bind("t", None).task_ops(keys, (), {"t": 7}, "i")[0]
    assert getattr(op, "park_key", None) == keys.park_lot(slots)
    assert getattr(op, "park_due", None) == keys.park_due(slots)
    # Run-time slot counts stay under the prefix's tag: the backend applies them itself.
    assert getattr(op, "overrides", None) == keys.cap_overrides("cap")


def test_limits_set_at_run_time_in_another_slot_are_applied_by_the_client() -> None:
    keys = KeySchema("tg", spread=True)
    reads: list[str] = []
    hashes = {
        keys.limit_overrides("api"): {"k:7": "500000.0 3", "*": "1000000.0 1"},
        keys.cap_overrides("cap"): {"*": "5"},
    }

    def read(name: str) -> dict[str, str]:
        reads.append(name)
        return hashes.get(name, {})

    limits = RemoteLimits(read)
    rate = RateLimit("1/s", key="{k}", name="api").bind("t", None)
    keyed, other = rate.op(keys, "7"), rate.op(keys, "8")
    unkeyed = RateLimit("1/s", name="api").bind("t", None).op(keys)
    slot = Concurrency(2, key="{k}", name="cap").bind("t", None).task_ops(keys, (), {"k": 7}, "i")
    out = limits.localize([keyed, other, unkeyed, *slot])
    assert (out[0].interval, out[0].burst, out[0].overrides) == (0.5, 3, None)  # its own entry
    assert (out[1].interval, out[1].burst, out[1].overrides) == (1.0, 1, None)  # "*"
    assert out[2] is unkeyed  # one slot with its hash: the script reads it
    assert (getattr(out[3], "limit", None), getattr(out[3], "overrides", "?")) == (5, None)
    limits.localize([keyed])
    assert sorted(reads) == sorted(hashes)  # each hash read once while fresh
    limits.forget()
    limits.localize([keyed])
    assert len(reads) == 3


@pytest.mark.parametrize("guard", [RateLimit, Concurrency, Lock])
def test_a_tag_needs_a_key(guard: Any) -> None:
    args = ("1/s",) if guard is RateLimit else (1,) if guard is Concurrency else ()
    with pytest.raises(ConfigurationError, match="no key") as raised:
        guard(*args, tag="{customer_id}")
    assert raised.value.field == "tag"
    spec = guard(*args, key="{doc}", tag="{customer_id}")
    assert "tag='{customer_id}'" in repr(spec)
    assert spec.replace() == spec


def test_a_tag_template_naming_a_missing_argument_fails_at_bind() -> None:
    import inspect

    def task(doc: str) -> None: ...

    with pytest.raises(ConfigurationError, match="customer_id") as raised:
        Lock(key="{doc}", tag="{customer_id}").bind("proj.t", inspect.signature(task))
    assert raised.value.field == "lock.tag"
