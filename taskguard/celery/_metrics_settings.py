"""The ``metrics`` settings section: the Prometheus endpoint a worker serves.

``app.conf.taskguard["metrics"] = {"port": 9808}`` turns it on (docs/observability.md).
Validated when the worker starts, like every setting: a bad value raises
:class:`~taskguard.errors.ConfigurationError` naming the field (``"metrics.port"``).
``taskguard drain --metrics-port`` goes through the same checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from taskguard._validate import count, text
from taskguard.errors import ConfigurationError

__all__ = ["MetricsSettings"]

_FIELDS = frozenset({"port", "address", "multiprocess_dir"})
_MAX_PORT = 65535


@dataclass(frozen=True, kw_only=True)
class MetricsSettings:
    """Where the Prometheus metrics are served.

    Attributes:
        port: The HTTP port of ``/metrics``; None (the default) serves nothing. 0 picks a
            free port (logged).
        address: The address to listen on.
        multiprocess_dir: prometheus_client's multiprocess directory for a prefork
            worker's pool processes (``PROMETHEUS_MULTIPROC_DIR`` wins when set; None: a
            fresh temporary directory, removed at shutdown).
    """

    port: int | None = None
    address: str = "0.0.0.0"
    multiprocess_dir: str | None = None

    @property
    def enabled(self) -> bool:
        """True when an endpoint is to be served."""
        return self.port is not None

    @classmethod
    def from_mapping(cls, raw: object) -> MetricsSettings:
        """Validate the ``metrics`` section (None: metrics off).

        Raises:
            ConfigurationError: Naming the field, e.g. ``metrics.port``.
        """
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ConfigurationError(f"must be a mapping, got {raw!r}", field="metrics")
        unknown = sorted(set(raw) - _FIELDS)
        if unknown:
            raise ConfigurationError(
                f"unknown setting; known: {', '.join(sorted(_FIELDS))}",
                field=f"metrics.{unknown[0]}",
            )
        values: dict[str, Any] = {}
        if raw.get("port") is not None:
            port = count(raw["port"], "metrics.port", 0)
            if port > _MAX_PORT:
                raise ConfigurationError(
                    f"must be a TCP port (0-{_MAX_PORT}), got {port}", field="metrics.port"
                )
            values["port"] = port
        if "address" in raw:
            values["address"] = text(raw["address"], "metrics.address")
        if raw.get("multiprocess_dir") is not None:
            values["multiprocess_dir"] = text(raw["multiprocess_dir"], "metrics.multiprocess_dir")
        return cls(**values)
