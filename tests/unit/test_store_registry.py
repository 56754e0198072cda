"""The store registry: a scheme maps to a factory; SQLStore's schemes are built in, and
SQLAlchemy is imported only when such a store is built."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

import taskguard
from taskguard.errors import ConfigurationError
from taskguard.sinks import (
    Loaded,
    Record,
    Store,
    register_store,
    registered_schemes,
    registry,
    store_from_url,
)


class DictStore:
    """A store in a dict, built from ``dict://name``."""

    def __init__(self, url: str, *, table: str = "kv") -> None:
        self.url = url
        self.table = table
        self.rows: dict[tuple[str, str], Loaded] = {}

    def write(self, namespace: str, records: Sequence[Record]) -> None:
        for r in records:
            self.rows[namespace, r.key] = Loaded(r.value, r.version, r.deleted)

    def load(self, namespace: str, key: str) -> Loaded | None:
        return self.rows.get((namespace, key))

    def load_many(self, namespace: str, keys: Sequence[str]) -> Mapping[str, Loaded]:
        return {k: self.rows[namespace, k] for k in keys if (namespace, k) in self.rows}

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def _own_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test end with it."""
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))


def test_a_registered_scheme_builds_its_store_with_the_options() -> None:
    register_store("dict", DictStore)
    store = store_from_url("dict://users", table="people")
    assert isinstance(store, DictStore)
    assert isinstance(store, Store)
    assert (store.url, store.table) == ("dict://users", "people")
    assert "dict" in registered_schemes()


def test_schemes_are_case_insensitive_and_a_second_registration_replaces() -> None:
    register_store("Dict", DictStore)
    built: list[str] = []

    def factory(url: str, **options: Any) -> Store:
        built.append(url)
        return DictStore(url, **options)

    register_store("dict", factory)
    store_from_url("DICT://x")
    assert built == ["DICT://x"]


@pytest.mark.parametrize("url", ["mysql://user:secret@db/app", "not a url", "redis://x"])
def test_an_unknown_scheme_lists_the_registered_ones(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        store_from_url(url)
    message = str(info.value)
    assert info.value.field == "url"
    listed = message.split("registered schemes: ", 1)[1]
    for scheme in ("postgres", "postgresql", "postgresql+psycopg", "sqlite", "sqlite+pysqlite"):
        assert scheme in listed
    assert "secret" not in message  # the URL is redacted


@pytest.mark.parametrize("scheme", ["", "a://b", None])
def test_a_scheme_must_be_a_name(scheme: Any) -> None:
    with pytest.raises(ValueError, match="store scheme"):
        register_store(scheme, DictStore)


def test_sql_urls_build_a_sql_store() -> None:
    from taskguard.sinks.sql import SQLStore

    for scheme in ("postgresql", "postgres", "postgresql+psycopg", "sqlite", "sqlite+pysqlite"):
        assert scheme in registered_schemes()
    store = store_from_url("sqlite://", table="kv")
    try:
        assert isinstance(store, SQLStore)
        assert store.table.name == "kv"
    finally:
        store.close()


def test_the_sql_factory_imports_sqlalchemy_only_when_called() -> None:
    code = (
        "import sys, taskguard, taskguard.sinks, taskguard.celery, taskguard.cli\n"
        "assert 'sqlalchemy' not in sys.modules, 'imported at startup'\n"
        "taskguard.sinks.store_from_url('sqlite://')\n"
        "assert 'sqlalchemy' in sys.modules\n"
    )
    root = str(Path(taskguard.__file__).resolve().parents[1])  # this checkout's taskguard
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=env)
