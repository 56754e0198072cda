"""Stores (sinks): where cached values are persisted. See :mod:`taskguard.sinks.base`."""

from __future__ import annotations

from .base import Loaded, Record, Store

__all__ = ["Loaded", "Record", "Store"]
