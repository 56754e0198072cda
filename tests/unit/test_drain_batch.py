"""Coalescing stream entries into records, and bisecting poison records out of a batch."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from taskguard.cache.records import version_of
from taskguard.drain.batch import (
    Coalesced,
    Entry,
    RawEntry,
    coalesce,
    coalesce_raw,
    write_bisecting,
)
from taskguard.errors import StoreError
from taskguard.sinks.base import JSONText, Record


def put(sid: str, key: str, value: object, version: int | None = None) -> Entry:
    fields = {b"k": key.encode(), b"v": json.dumps(value).encode(), b"c": b"json"}
    if version is not None:
        fields[b"V"] = str(version).encode()
    return Entry(sid, fields)


def delete(sid: str, key: str) -> Entry:
    return Entry(sid, {b"k": key.encode(), b"d": b"1", b"c": b"json"})


def test_highest_version_wins_per_key() -> None:
    batch = coalesce([put("5-0", "a", 1), put("5-1", "b", 2), put("7-0", "a", 3)])
    assert {r.key: (r.value, r.version) for r in batch.records} == {
        "a": (3, version_of("7-0")),
        "b": (2, version_of("5-1")),
    }
    assert batch.winners["a"].stream_id == "7-0"
    assert batch.latest == {"a": "7-0", "b": "5-1"}


def test_a_delete_is_a_versioned_tombstone_and_can_win() -> None:
    batch = coalesce([put("1-0", "a", 1), delete("2-0", "a")])
    assert batch.records == [Record("a", None, version_of("2-0"), deleted=True)]


def test_a_later_put_beats_an_earlier_delete() -> None:
    batch = coalesce([delete("1-0", "a"), put("2-0", "a", "back")])
    assert batch.records == [Record("a", "back", version_of("2-0"), deleted=False)]


def test_an_explicit_version_ranks_by_itself_not_by_its_stream_id() -> None:
    # A re-queued dead letter (V = its original version) must not beat a newer write.
    old = version_of("3-0")
    batch = coalesce([put("4-0", "a", "new"), put("9-0", "a", "requeued", version=old)])
    assert batch.records == [Record("a", "new", version_of("4-0"))]
    assert batch.latest == {"a": "9-0"}


def test_msgpack_payloads_decode() -> None:
    msgpack = pytest.importorskip("msgpack")
    entry = Entry("1-0", {b"k": b"a", b"v": msgpack.packb({"x": [1, 2]}), b"c": b"msgpack"})
    assert coalesce([entry]).records[0].value == {"x": [1, 2]}


def test_an_undecodable_winner_is_rejected_and_the_next_version_written() -> None:
    bad = Entry("9-0", {b"k": b"a", b"v": b"{not json", b"c": b"json"})
    batch = coalesce([put("1-0", "a", "ok"), bad])
    assert [r.value for r in batch.records] == ["ok"]
    assert [(r.entry.stream_id, r.version) for r in batch.rejected] == [("9-0", version_of("9-0"))]
    assert "undecodable" in batch.rejected[0].error


def test_unknown_codec_and_missing_key_are_rejected() -> None:
    unknown = Entry("1-0", {b"k": b"a", b"v": b"x", b"c": b"pickle"})
    keyless = Entry("2-0", {b"v": b"1"})
    batch = coalesce([unknown, keyless])
    assert batch.records == []
    assert sorted(r.entry.stream_id for r in batch.rejected) == ["1-0", "2-0"]


class PickyStore:
    """Refuses any batch holding a key in ``poison`` (as a CHECK constraint would)."""

    def __init__(self, poison: set[str], transient_first: int = 0) -> None:
        self.poison = poison
        self.rows: dict[str, object] = {}
        self.calls: list[list[str]] = []

    def write(self, records: Sequence[Record]) -> None:
        self.calls.append([r.key for r in records])
        bad = [r.key for r in records if r.key in self.poison]
        if bad:
            raise StoreError(f"check constraint violated by {bad[0]}", transient=False)
        self.rows.update({r.key: r.value for r in records})


def records(n: int) -> list[Record]:
    return [Record(f"k{i}", i, i + 1) for i in range(n)]


def test_bisecting_isolates_each_poison_record_and_writes_the_rest() -> None:
    store = PickyStore({"k3", "k11"})
    poisoned = write_bisecting(store.write, records(16))
    assert sorted(r.key for r, _ in poisoned) == ["k11", "k3"]
    assert all("check constraint" in error for _, error in poisoned)
    assert sorted(store.rows) == sorted(f"k{i}" for i in range(16) if i not in (3, 11))
    # Halving, not one record at a time: far fewer writes than 16 singles plus the batch.
    assert len(store.calls) < 16


def test_a_clean_batch_is_one_write() -> None:
    store = PickyStore(set())
    assert write_bisecting(store.write, records(100)) == []
    assert len(store.calls) == 1


def test_other_exceptions_count_as_permanent() -> None:
    def write(batch: Sequence[Record]) -> None:
        if any(r.key == "k1" for r in batch):
            raise TypeError("cannot adapt")

    poisoned = write_bisecting(write, records(4))
    assert [(r.key, e) for r, e in poisoned] == [("k1", "TypeError: cannot adapt")]


def test_a_transient_error_is_not_bisected_but_raised() -> None:
    def write(batch: Sequence[Record]) -> None:
        raise StoreError("connection lost", transient=True)

    with pytest.raises(StoreError):
        write_bisecting(write, records(4))


def test_nothing_to_write_writes_nothing() -> None:
    store = PickyStore(set())
    assert write_bisecting(store.write, []) == []
    assert store.calls == []


# ---------------------------------------------------------------- raw entries (the read script)


def raw(entry: Entry) -> RawEntry:
    return entry.stream_id.encode(), [part for pair in entry.fields.items() for part in pair]


def _summary(batch: Coalesced) -> dict[str, tuple[object, int, bool, str]]:
    return {
        r.key: (r.value, r.version, r.deleted, batch.winner(r.key).stream_id) for r in batch.records
    }


def test_raw_fast_path_hands_json_text_through() -> None:
    entries = [put("5-0", "a", {"x": 'q\\"é'}), put("5-1", "b\t\n", [1, None]), put("6-7", "c", 3)]
    batch = coalesce_raw([raw(e) for e in entries], json_text=True)
    assert all(type(r.value) is JSONText for r in batch.records)
    assert [json.loads(r.value) for r in batch.records] == [{"x": 'q\\"é'}, [1, None], 3]
    assert [r.version for r in batch.records] == [version_of(e.stream_id) for e in entries]
    assert batch.latest == {"a": "5-0", "b\t\n": "5-1", "c": "6-7"}
    assert batch.winner("b\t\n") == entries[1]
    decoded = coalesce_raw([raw(e) for e in entries])
    assert _summary(decoded) == _summary(coalesce(entries))
    assert not any(isinstance(r.value, JSONText) for r in decoded.records)


@pytest.mark.parametrize(
    "odd",
    [
        put("4-0", "a", "older"),  # a key twice: the highest version wins
        put("9-0", "a", "requeued", version=1),  # an explicit version
        delete("9-0", "a"),
        Entry("9-0", {b"k": b"a", b"v": b"{not json", b"c": b"json"}),
        Entry("9-0", {b"k": b"\xff", b"v": b"1", b"c": b"json"}),
        Entry("9-0", {b"v": b"1"}),
        Entry("9-0", {b"k": b"a", b"v": b"\x92\x01\x02", b"c": b"msgpack"}),
    ],
)
@pytest.mark.parametrize("json_text", [False, True])
def test_raw_batches_coalesce_like_entries(odd: Entry, json_text: bool) -> None:
    entries = [put("5-0", "a", {"n": 1}), put("5-1", "b", 2), odd]
    batch = coalesce_raw([raw(e) for e in entries], json_text=json_text)
    expected = coalesce(entries)
    got = _summary(batch)
    if json_text:
        got = {
            k: (json.loads(v) if isinstance(v, JSONText) else v, *rest)
            for k, (v, *rest) in got.items()
        }
    assert got == _summary(expected)
    assert [(r.entry, r.version) for r in batch.rejected] == [
        (r.entry, r.version) for r in expected.rejected
    ]


def test_raw_fast_path_leaves_bad_json_to_the_store() -> None:
    # One write per key: no older version to fall back on; the store refuses the text and
    # bisection dead-letters it with its version (without json_text it is rejected here).
    bad = Entry("9-0", {b"k": b"a", b"v": b"{not json", b"c": b"json"})
    passed = coalesce_raw([raw(bad)], json_text=True)
    assert passed.records == [Record("a", JSONText("{not json"), version_of("9-0"))]
    checked = coalesce_raw([raw(bad)])
    assert checked.records == []
    assert [(r.entry, r.version) for r in checked.rejected] == [(bad, version_of("9-0"))]
