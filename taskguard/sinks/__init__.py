"""Stores (sinks): where cached values are persisted. See :mod:`taskguard.sinks.base`.

:class:`SQLStore` and :class:`TableMapping` (:mod:`taskguard.sinks.sql`) need SQLAlchemy
(``pip install 'celery-taskguard[sql]'``, plus ``[postgres]`` for PostgreSQL); they are
imported on first use, so ``import taskguard.sinks`` works without it.
:func:`store_from_url` builds a store from its URL through the scheme registry
(:mod:`taskguard.sinks.registry`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import CheckedStore, Loaded, Record, Store, check_record
from .registry import register_store, registered_schemes, store_from_url

if TYPE_CHECKING:
    from .sql import SQLStore, TableMapping

__all__ = [
    "CheckedStore",
    "Loaded",
    "Record",
    "SQLStore",
    "Store",
    "TableMapping",
    "check_record",
    "register_store",
    "registered_schemes",
    "store_from_url",
]

_LAZY = {"SQLStore", "TableMapping"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        try:
            from . import sql
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"taskguard.sinks.{name} needs SQLAlchemy: pip install 'celery-taskguard[sql]' "
                "(and '[postgres]' for PostgreSQL)"
            ) from exc
        return getattr(sql, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
