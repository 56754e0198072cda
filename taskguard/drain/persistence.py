"""Whether Redis keeps the write-behind records the drain pool has not drained yet."""

from __future__ import annotations

import logging

from taskguard.backend.redis import RedisBackend
from taskguard.errors import BackendError, BackendUnavailable

__all__ = ["check_persistence"]

logger = logging.getLogger("taskguard.drain")

_PERSISTENCE_WARNING = "write-behind records live only in Redis until drained"


def check_persistence(backend: RedisBackend) -> list[str]:
    """Warn (and return the warnings) if Redis may lose queued records.

    AOF off loses what was written since the last snapshot on a restart; an ``allkeys-*``
    eviction policy may evict a partition's stream under memory pressure. CONFIG may be
    disabled (managed Redis) or not granted (CONFIG is in ``@dangerous``, which the
    least-privilege ACL user of docs/security.md lacks): then nothing is checked.
    """
    try:
        with backend.commands("CONFIG GET") as client:
            config = client.config_get("appendonly")
            config.update(client.config_get("maxmemory-policy"))
    except (BackendUnavailable, BackendError) as exc:
        logger.info("drain: cannot read Redis persistence settings (%s); not checked", exc)
        return []
    found = {str(k, "utf-8") if isinstance(k, bytes) else k: v for k, v in config.items()}
    text = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in found.items()}
    warnings = []
    if text.get("appendonly", "yes") != "yes":
        warnings.append(
            f"Redis has appendonly=no: {_PERSISTENCE_WARNING}, so a Redis restart loses "
            "those written since the last snapshot. Set appendonly yes (appendfsync everysec)."
        )
    if text.get("maxmemory-policy", "").startswith("allkeys-"):
        warnings.append(
            f"Redis has maxmemory-policy={text['maxmemory-policy']}: {_PERSISTENCE_WARNING}, "
            "and eviction may delete them. Use noeviction or a volatile-* policy."
        )
    for warning in warnings:
        logger.warning("taskguard drain: %s", warning)
    return warnings
