"""Every benchmark module imports and has the shape ``python -m benchmarks`` runs.

Benchmarks are not run by CI (they want a quiet machine), so a broken import among them
would otherwise go unseen until someone runs them. The peers they compare with come from
the ``bench`` extra, which CI does not install: a module that needs a missing peer is
skipped, the others are still checked.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

#: The ``bench`` extra's packages, by the name they are imported as.
PEERS = {"limits", "dramatiq", "pottery", "redis_lock", "pybreaker"}
MODULES = sorted(
    path.stem
    for path in (Path(__file__).resolve().parents[2] / "benchmarks").glob("*.py")
    if not path.stem.startswith("_")
)


@pytest.mark.parametrize("name", MODULES)
def test_a_benchmark_module_imports(name: str) -> None:
    try:
        module = importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in PEERS:
            pytest.skip(f"needs the bench extra ({exc.name})")
        raise
    if hasattr(module, "run") and hasattr(module, "NAME"):
        assert isinstance(module.TITLE, str)
        assert module.TITLE
        assert callable(module.run)
