"""The drain pool: moves write-behind records from Redis into a store (docs/write-behind.md)."""

from __future__ import annotations

from .build import pool_from_settings, store_from_settings
from .config import DrainSettings
from .deadletters import DeadLetter, dead_letters, requeue_dead_letters
from .heap import freeze_heap
from .metrics import DrainMetrics, metrics
from .pool import DrainPool, check_persistence

__all__ = [
    "DeadLetter",
    "DrainMetrics",
    "DrainPool",
    "DrainSettings",
    "check_persistence",
    "dead_letters",
    "freeze_heap",
    "metrics",
    "pool_from_settings",
    "requeue_dead_letters",
    "store_from_settings",
]
