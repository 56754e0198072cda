"""Per-key limit values: premium tenants 100/s, everyone else the guard's own rate.

``RateLimit("5/s", key="{tenant}", per_key={"acme": "100/s"})`` and
``Concurrency(2, key="{tenant}", per_key=lambda tenant: 10 if tenant in BIG else None)``:
a mapping from a rendered key to its value, or a callable returning the value for a key
(``None``: the guard's own). The value is chosen in the worker when the task's ops are
built, so it goes to Redis in the same admission call. For values kept as data and
changed while the fleet runs, see ``taskguard limit set`` (docs/rate-limits.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from taskguard.errors import ConfigurationError

__all__ = ["PerKey"]

T = TypeVar("T")


class PerKey(Generic[T]):
    """A guard value chosen per rendered key.

    Args:
        values: A mapping of key to value, or a callable taking the key and returning a
            value or ``None``.
        check: Validates (and converts) one value, raising ConfigurationError.
        field: The setting named in errors.
    """

    __slots__ = ("check", "field", "source", "values")

    def __init__(
        self,
        values: Mapping[str, object] | Callable[[str | None], object],
        check: Callable[[object, str], T],
        field: str,
    ) -> None:
        self.source = values
        self.check = check
        self.field = field
        if callable(values):
            self.values: dict[str, T] | None = None
        elif isinstance(values, Mapping):
            self.values = {str(k): check(v, f"{field}.{k}") for k, v in values.items()}
        else:
            raise ConfigurationError(
                f"must be a mapping of key to value or a callable, got {type(values).__name__}",
                field=field,
            )

    def get(self, key: str | None, default: T) -> T:
        """The value for ``key``, or ``default`` (the guard's own)."""
        if self.values is not None:
            return default if key is None else self.values.get(key, default)
        found = self.source(key)  # type: ignore[operator]
        return default if found is None else self.check(found, f"{self.field}({key!r})")

    def __repr__(self) -> str:
        return repr(self.source)
