"""The key schema is injective, keeps user strings out of the hash tag, and its SCAN
pattern matches its own keys and no others (issue 11, finding 3).

The proof is a decoder written here from the documented format (docs/design.md, "Key
schema"): every key any :class:`KeySchema` method builds, for any user strings, decodes
back to the schema and the call that built it, so no two calls can share a key.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest
from celery import Celery
from hypothesis import given
from hypothesis import strategies as st

import taskguard
from taskguard import GuardedTask, Lock, RateLimit
from taskguard.keys import RESERVED_KINDS, KeySchema

from .celery_harness import published

# ---------------------------------------------------------------- what the schema builds

#: Every public KeySchema method building a key -> the kinds of its arguments.
#: A method added to KeySchema must be added here (test_every_key_method_is_covered).
METHODS: dict[str, tuple[str, ...]] = {
    "rate_limit": ("name", "key?"),
    "lock": ("name", "key?"),
    "fence": ("name", "key?"),
    "wakeup": ("name", "key?"),
    "slots": ("name", "key?"),
    "slot_wakeup": ("name", "key?"),
    "unique": ("name", "key?"),
    "breaker": ("name",),
    "breaker_window": ("name",),
    "breaker_probes": ("name",),
    "limit_overrides": ("name",),
    "cap_overrides": ("name",),
    "quota_overrides": ("name",),
    "guard": ("kind", "name", "key?"),
    "cache_value": ("namespace", "partition", "key"),
    "cache_flight": ("namespace", "partition", "key"),
    "cache_stream": ("namespace", "partition"),
    "cache_dirty": ("namespace", "partition"),
    "drain_lease": ("namespace", "partition"),
    "dead_letters": ("namespace",),
    "write_behind_namespaces": (),
    "drain_pools": (),
    "park_messages": (),
    "park_meta": (),
    "park_due": (),
    "park_out": (),
    "park_heads": (),
}
#: Public methods that build no key: the pub/sub channels, and the SCAN patterns.
NOT_KEYS = {"breaker_events", "events", "cache_stream_pattern", "guard_pattern", "pattern"}
#: Keys derived from another key (a parking lot from its guard key), and the inverses
#: (a lot's guard key; a guard key's kind, name and key).
DERIVED = {"park_lot", "park_fair", "park_guard_key", "guard_parts", "sibling", "shared"}
_PARK = {"parkmsg": "park_messages", "parkmeta": "park_meta", "parkdue": "park_due"}
_PARK["parkout"] = "park_out"
_PARK["parkheads"] = "park_heads"

# Few characters, so that generated strings often differ only where escaping matters.
TRICKY = ["a", "b", "7", "3", "A", "D", ":", "{", "}", "(", ")", "%", " ", "\x00", "\n"]
TRICKY += ["\x7f", "\u2028", "\xa0", "é", "\ud800", "*", "?", "[", "]", "\\", "-"]
user_text = st.one_of(
    st.text(st.sampled_from(TRICKY), max_size=6), st.text(max_size=8)
)  # any string a user can give: a name, a key, a namespace, a tag
prefix_chars = [c for c in TRICKY + list("xyz.") if c not in "{}" and c.isprintable()]
prefixes = st.text(st.sampled_from([c for c in prefix_chars if not c.isspace()]), min_size=1)
kinds = st.text(st.sampled_from(list("qrlockxz1")), min_size=1, max_size=5).filter(
    lambda k: k not in RESERVED_KINDS
)


any_schema = st.tuples(prefixes, st.one_of(st.none(), user_text.filter(bool)))
any_method = st.sampled_from(sorted(METHODS))


@st.composite
def calls(
    draw: st.DrawFn,
    schemas: st.SearchStrategy[tuple[str, str | None]] = any_schema,
    methods: st.SearchStrategy[str] = any_method,
    texts: st.SearchStrategy[str] = user_text,
) -> tuple[tuple[str, str], str, tuple[Any, ...]]:
    """``((prefix, tag), method, args)``: one key, as a caller asks for it."""
    prefix, tag = draw(schemas)
    method = draw(methods)
    args = []
    for kind in METHODS[method]:
        if kind == "kind":
            args.append(draw(kinds))
        elif kind == "partition":
            args.append(draw(st.integers(0, 12)))
        elif kind == "key?":
            args.append(draw(st.one_of(st.none(), texts)))
        else:
            args.append(draw(texts))
    return (prefix, prefix if tag is None else tag), method, (prefix, tag, *args)


@st.composite
def close_calls(draw: st.DrawFn) -> list[tuple[tuple[str, str], str, tuple[Any, ...]]]:
    """Calls of one or two schemas and methods, with strings of a few characters where
    escaping matters: distinct calls whose keys would meet if the escaping failed."""
    prefix_tags = st.tuples(
        st.sampled_from(["a", "a:b"]),
        st.sampled_from([None, "a", "a:b", "{a}", "(a)", "a:c:a:1", "%7Ba%7D"]),
    )
    schemas = draw(st.lists(prefix_tags, min_size=1, max_size=2))
    methods = draw(st.lists(any_method, min_size=1, max_size=2))
    texts = st.text(st.sampled_from("a:{}()%7BD"), max_size=4)
    one = calls(st.sampled_from(schemas), st.sampled_from(methods), texts)
    return draw(st.lists(one, min_size=2, max_size=40))


def build(call: tuple[Any, str, tuple[Any, ...]]) -> str:
    _, method, (prefix, tag, *args) = call
    return str(getattr(KeySchema(prefix, tag), method)(*args))


def normal(call: tuple[Any, str, tuple[Any, ...]]) -> tuple[Any, ...]:
    """What a key must tell: the schema (tag defaulting to the prefix), method, arguments."""
    schema, method, (_, _, *args) = call
    kind = METHODS[method]
    if method == "guard":
        return (schema, "guard", *args)
    if kind and kind[-1] == "key?" and len(args) < len(kind):
        args.append(None)
    return (schema, method, *args)


# ---------------------------------------------------------------- a decoder for the format

_ESCAPE = re.compile(r"%([0-9A-F]{2})")
_KINDS = {
    "rl": "rate_limit",
    "lock": "lock",
    "fence": "fence",
    "wake": "wakeup",
    "slots": "slots",
    "swake": "slot_wakeup",
    "uniq": "unique",
    "cb": "breaker",
    "cbw": "breaker_window",
    "cbp": "breaker_probes",
    "lim": "limit_overrides",
    "limc": "cap_overrides",
    "limq": "quota_overrides",
}


def unescape(text: str, forbidden: str) -> str:
    """Undo the percent-escaping, checking that nothing that had to be escaped is left."""
    assert not any(c in text for c in forbidden), text
    assert all(c.isprintable() for c in text), text
    raw = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "%":
            match = _ESCAPE.match(text, i)
            assert match, f"a bare % in {text!r}"
            raw.append(int(match.group(1), 16))
            i = match.end()
        else:
            raw += text[i].encode("utf-8", "surrogatepass")
            i += 1
    return raw.decode("utf-8", "surrogatepass")


def part(text: str) -> str:
    return unescape(text, ":{}")  # a name, tag or namespace: no raw ':', '{' or '}'


def tail(text: str) -> str:
    return unescape(text, "{}")  # a key: no raw brace


def decode(key: str) -> tuple[Any, ...]:
    """``(schema, method, *args)`` of a key, read from the documented format only."""
    prefix, sep, rest = key.partition(":{")
    assert sep
    assert "{" not in prefix
    end = min(i for i in (rest.find("}"), rest.find(":")) if i >= 0)
    schema = (prefix, part(rest[:end]))
    rest = rest[end:]
    if rest.startswith(":c:"):  # a cache partition's own tag
        match = re.fullmatch(r":c:([^:}]*):([0-9]+)\}:(.*)", rest, re.DOTALL)
        assert match, key
        namespace, index, after = match.groups()
        where = (part(namespace), int(index))
        fixed = {"wb": "cache_stream", "dirty": "cache_dirty", "lease": "drain_lease"}
        if after in fixed:
            return (schema, fixed[after], *where)
        what, _, cache_key = after.partition(":")
        method = {"v": "cache_value", "f": "cache_flight"}[what]
        return (schema, method, *where, tail(cache_key))
    assert rest.startswith("}:"), key
    kind, _, rest = rest[2:].partition(":")
    if kind == "wbns":
        return (schema, {"": "write_behind_namespaces", "pools": "drain_pools"}[rest])
    if kind == "dlq":
        return (schema, "dead_letters", part(rest))
    if kind in _PARK:
        assert rest == "", key
        return (schema, _PARK[kind])
    name, colon, user_key = rest.partition(":")
    args = (part(name), tail(user_key) if colon else None)
    if kind not in _KINDS:
        assert kind.isalnum()
        assert kind not in RESERVED_KINDS
        return (schema, "guard", kind, *args)
    if _KINDS[kind].startswith("breaker") or kind.startswith("lim"):
        assert args[1] is None
        return (schema, _KINDS[kind], args[0])
    return (schema, _KINDS[kind], *args)


# ---------------------------------------------------------------- the properties


def test_every_key_method_is_covered() -> None:
    public = {
        n for n, v in inspect.getmembers(KeySchema, inspect.isfunction) if not n.startswith("_")
    }
    assert public == set(METHODS) | NOT_KEYS | DERIVED


GUARD_METHODS = sorted(m for m in METHODS if not m.startswith(("cache_", "drain_", "park_")))


@given(calls(methods=st.sampled_from(GUARD_METHODS)))
def test_a_parking_lot_is_its_guard_key_under_the_park_kind(call: Any) -> None:
    _, _, (prefix, tag, *_) = call
    schema = KeySchema(prefix, tag)
    key = build(call)
    lot = schema.park_lot(key)
    assert schema.park_guard_key(lot) == key
    assert lot.count("{") == 1
    assert lot.count("}") == 1
    assert lot.startswith(f"{key[: key.index('}') + 1]}:park:")
    fair = schema.park_fair(key)
    assert fair == lot.replace(":park:", ":parkfair:", 1)
    assert fair.count("{") == 1
    assert fair.count("}") == 1


@given(calls())
def test_every_key_decodes_back_to_its_call(call: Any) -> None:
    assert decode(build(call)) == normal(call)


@given(close_calls())
def test_distinct_calls_build_distinct_keys(batch: list[Any]) -> None:
    keys = {}
    for call in batch:
        keys.setdefault(build(call), set()).add(normal(call))
    assert all(len(made_by) == 1 for made_by in keys.values()), keys


@given(calls())
def test_user_strings_never_open_or_close_a_hash_tag(call: Any) -> None:
    key = build(call)
    (prefix, tag), method, _ = call
    assert key.count("{") == 1
    assert key.count("}") == 1
    assert key.startswith(f"{prefix}:{{")
    hash_tag = key[key.index("{") + 1 : key.index("}")]
    assert part(hash_tag.split(":", 1)[0]) == tag
    if not method.startswith(("cache_", "drain_")):
        # Guard state shares one slot: its hash tag is the schema's tag alone.
        assert ":" not in hash_tag


#: Guard methods taking a name (and maybe a key) -> the kind code their keys carry.
NAMED_KINDS = {method: code for code, method in _KINDS.items()}


@given(calls())
def test_guard_parts_reads_back_the_kind_name_and_key(call: Any) -> None:
    _, method, (prefix, tag, *args) = call
    parts = KeySchema(prefix, tag).guard_parts(build(call))
    if method == "guard":
        assert parts == tuple(args) + (None,) * (3 - len(args))
    elif method in NAMED_KINDS:
        name, *key = args
        assert parts == (NAMED_KINDS[method], name, key[0] if key else None)
    elif method == "dead_letters":
        assert parts == ("dlq", args[0], None)
    elif method == "drain_pools":
        assert parts == ("wbns", "pools", None)
    else:  # cache keys, and the schema's name-less keys
        assert parts is None


@given(calls(), calls())
def test_the_guard_pattern_matches_its_schemas_guard_keys_only(call: Any, other: Any) -> None:
    (prefix, tag), _, (_, given_tag, *_) = call
    pattern = _redis_glob(KeySchema(prefix, given_tag).guard_pattern())
    key = build(other)
    guard_key = not other[1].startswith(("cache_", "drain_lease"))
    assert bool(pattern.fullmatch(key)) == (other[0] == (prefix, tag) and guard_key)


def _redis_glob(pattern: str) -> re.Pattern[str]:
    """Redis's ``stringmatchlen`` as a regex: ``*``, ``?``, ``[...]``/``[^...]`` with
    ranges, and ``\\`` escaping the next character, in and out of brackets."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "[":
            j, members = i + 1, ["["]
            if j < len(pattern) and pattern[j] == "^":
                members.append("^")
                j += 1
            while j < len(pattern) and pattern[j] != "]":
                if pattern[j] == "\\" and j + 1 < len(pattern):
                    j += 1
                members.append("-" if pattern[j] == "-" else re.escape(pattern[j]))
                j += 1
            out.append("".join(members) + "]")
            i = j + 1
            continue
        out.append({"*": ".*", "?": "."}.get(c) or re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


@given(calls(), calls())
def test_the_scan_pattern_matches_its_schema_only(call: Any, other: Any) -> None:
    (prefix, tag), _, (_, given_tag, *_) = call
    pattern = _redis_glob(KeySchema(prefix, given_tag).pattern())
    assert pattern.fullmatch(build(call))
    assert bool(pattern.fullmatch(build(other))) == (other[0] == (prefix, tag))


def test_pattern_escapes_glob_characters() -> None:
    keys = KeySchema("a*[b]?\\", "t")
    assert keys.pattern() == "a\\*\\[b\\]\\?\\\\:{t[}:]*"
    assert not _redis_glob(keys.pattern()).fullmatch(KeySchema("aXbY\\", "t").lock("x"))
    assert _redis_glob(keys.pattern()).fullmatch(keys.cache_value("ns", 0, "k"))


# ---------------------------------------------------------------- readable where it can be


def test_keys_stay_readable() -> None:
    keys = KeySchema("tg")
    assert keys.slots("partner-api") == "tg:{tg}:slots:partner-api"
    assert keys.rate_limit("proj.tasks.sync_customer", "42") == (
        "tg:{tg}:rl:proj.tasks.sync_customer:42"
    )
    assert keys.rate_limit("api", "tenant:7") == "tg:{tg}:rl:api:tenant:7"
    assert keys.rate_limit("api:tenant", "7") == "tg:{tg}:rl:api%3Atenant:7"
    assert keys.lock("proj.render", "{a}") == "tg:{tg}:lock:proj.render:%7Ba%7D"
    assert keys.lock("proj.render", "(a)") == "tg:{tg}:lock:proj.render:(a)"
    assert keys.unique("a b", "50%\n") == "tg:{tg}:uniq:a b:50%25%0A"
    assert keys.unique("n", "") == "tg:{tg}:uniq:n:" != keys.unique("n")
    assert keys.cache_value("users", 3, "user:42") == "tg:{tg:c:users:3}:v:user:42"
    assert KeySchema("myapp:tg").lock("x") == "myapp:tg:{myapp%3Atg}:lock:x"


def test_guard_kinds_cannot_take_the_schemas_own() -> None:
    keys = KeySchema()
    assert keys.guard("q", "daily", "7") == "tg:{tg}:q:daily:7"
    for kind in sorted(RESERVED_KINDS):
        with pytest.raises(ValueError, match="taken"):
            keys.guard(kind, "x")
    for kind in ("", "a:b", "q}", "٣"):
        with pytest.raises(ValueError, match="ASCII letters and digits"):
            keys.guard(kind, "x")


@pytest.mark.parametrize("bad", [7, 1.5, (1, 2), b"x"])
def test_a_key_that_is_not_text_is_a_type_error(bad: Any) -> None:
    with pytest.raises(TypeError, match="key must be a str"):
        KeySchema().lock("x", bad)
    with pytest.raises(TypeError, match="name must be a str"):
        KeySchema().lock(bad)


# ---------------------------------------------------------------- the collisions of issue 11


def test_braces_and_parentheses_are_two_unique_locks(app: Celery) -> None:
    @app.task(shared=False, base=GuardedTask, guards=[Lock(key="{doc}", mode="until_executing")])
    def render(doc: str) -> None: ...

    first = render.apply_async(("(a)",))
    second = render.apply_async(("{a}",))
    assert second.id != first.id
    assert len(published(app)) == 2


def test_a_colon_in_a_task_name_is_not_a_key_separator(app: Celery) -> None:
    def task(name: str) -> Any:
        @app.task(
            name=name,
            shared=False,
            base=GuardedTask,
            guards=[Lock(key="{k}", mode="until_executed")],
        )
        def job(k: str) -> None: ...

        return job

    first = task("proj.render").apply_async(("x:y",))
    second = task("proj.render:x").apply_async(("y",))
    assert second.id != first.id
    assert len(published(app)) == 2


def test_a_colon_in_a_limiter_name_is_not_a_key_separator() -> None:
    client = taskguard.connect("memory://")
    api = client.rate_limiter("api", "1/h")
    api_tenant = client.rate_limiter("api:tenant", "1/h")
    assert api.try_acquire(key="tenant:7").allowed
    assert api_tenant.try_acquire(key="7").allowed  # another limiter's bucket
    assert not api.try_acquire(key="tenant:7").allowed


def test_rate_limit_specs_of_different_names_use_different_buckets() -> None:
    keys = KeySchema()
    assert RateLimit("1/s", name="api").op(keys, "tenant:7").key != (
        RateLimit("1/s", name="api:tenant").op(keys, "7").key
    )
