"""JSONBatch: the drain's column-wise batch of JSON sets, and its COPY data."""

from __future__ import annotations

import json

import pytest

from taskguard.cache.records import version_of
from taskguard.drain.batch import coalesce_raw, write_bisecting
from taskguard.sinks.base import JSONBatch, JSONText, Record
from taskguard.sinks.pg_copy import copy_batch, copy_text

from .test_sql_store import TRICKY, _parse_copy


def batch_of(keys: list[str]) -> JSONBatch:
    texts = [json.dumps({"s": key}, ensure_ascii=False).encode() for key in keys]
    return JSONBatch(keys, texts, [10 + i for i in range(len(keys))])


def test_a_json_batch_is_a_sequence_of_records() -> None:
    batch = batch_of(["a", "b", "c"])
    assert len(batch) == 3
    assert batch[1] == Record("b", JSONText('{"s": "b"}'), 11)
    assert type(batch[1].value) is JSONText
    assert isinstance(batch[1:], JSONBatch)
    assert list(batch[1:]) == [batch[1], batch[2]]
    assert batch == [batch[0], batch[1], batch[2]]
    assert batch != [batch[0]]
    with pytest.raises(ValueError, match="same length"):
        JSONBatch(["a"], [], [1])


@pytest.mark.parametrize("keys", [["plain", "k2", "back\\slash", "ü ✓"], TRICKY])
def test_copy_batch_is_copy_text_of_the_same_rows(keys: list[str]) -> None:
    batch = batch_of(keys)
    data = copy_batch(batch)
    rows = [(r.key, str(r.value), r.version, False) for r in batch]
    assert _parse_copy(data.decode()) == rows
    assert data.decode() == copy_text(rows)
    assert copy_batch(batch_of([])) == b""


def test_raw_fast_path_gives_a_json_batch_only_for_json_text_stores() -> None:
    raw = [
        (b"5-%d" % i, [b"k", b"k%d" % i, b"v", b'{"n":%d}' % i, b"c", b"json"]) for i in range(3)
    ]
    batch = coalesce_raw(raw, json_text=True)
    assert type(batch.records) is JSONBatch
    assert [r.version for r in batch.records] == [version_of(f"5-{i}") for i in range(3)]
    assert batch.winner("k1").stream_id == "5-1"
    assert type(coalesce_raw(raw).records) is list


def test_a_payload_that_is_not_utf8_leaves_the_fast_path() -> None:
    raw = [(b"5-0", [b"k", b"a", b"v", b'"\xff"', b"c", b"json"])]
    batch = coalesce_raw(raw, json_text=True)
    assert type(batch.records) is not JSONBatch
    assert batch.records == []
    assert [r.entry.stream_id for r in batch.rejected] == ["5-0"]


def test_bisection_keeps_halves_of_a_json_batch_as_json_batches() -> None:
    seen: list[type] = []

    def write(records: object) -> None:
        seen.append(type(records))
        assert isinstance(records, JSONBatch)
        if any(r.key == "k2" for r in records):
            raise ValueError("poison")

    poisoned = write_bisecting(write, batch_of([f"k{i}" for i in range(4)]))
    assert [(r.key, error) for r, error in poisoned] == [("k2", "ValueError: poison")]
    assert set(seen) == {JSONBatch}
