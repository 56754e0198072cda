"""``taskguard.connect()`` as a context manager: the backend is closed at the end, also
when the block raises (redis-py's clients hold reference cycles, so a dropped client is
only freed by the garbage collector)."""

from __future__ import annotations

import pytest

import taskguard


def _counting(client: taskguard.Client, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    closed: list[int] = []
    monkeypatch.setattr(client.backend, "close", lambda: closed.append(1))
    return closed


def test_the_block_closes_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    client = taskguard.connect("memory://")
    closed = _counting(client, monkeypatch)
    with client as entered:
        assert entered is client
        assert entered.rate_limiter("emails", "100/m").try_acquire().allowed
        assert closed == []
    assert closed == [1]


def test_a_block_that_raises_closes_it_too(monkeypatch: pytest.MonkeyPatch) -> None:
    client = taskguard.connect("memory://")
    closed = _counting(client, monkeypatch)
    with pytest.raises(KeyError), client:
        raise KeyError("boom")
    assert closed == [1]
