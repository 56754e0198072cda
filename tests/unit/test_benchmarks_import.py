"""Every benchmark module imports and has the shape ``python -m benchmarks`` runs.

Benchmarks are not run by CI (they want a quiet machine), so a broken import among them
would otherwise go unseen until someone runs them. The peers they compare with come from
the ``bench`` extra, which CI does not install: a module that needs a missing peer is
skipped, the others are still checked. The imports run in a child interpreter, since
``benchmarks.celeryapp`` defines Celery tasks, which the test process must not see.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The ``bench`` extra's packages, by the name they are imported as.
PEERS = ["limits", "dramatiq", "pottery", "redis_lock", "pybreaker"]

_CHILD = """
import importlib, json, sys
from pathlib import Path
peers, results = set(sys.argv[1].split(",")), {}
for path in sorted(Path("benchmarks").glob("*.py")):
    if path.stem.startswith("_"):
        continue
    try:
        module = importlib.import_module(f"benchmarks.{path.stem}")
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        results[path.stem] = "skipped" if top in peers else f"error: {exc!r}"
        continue
    except Exception as exc:
        results[path.stem] = f"error: {exc!r}"
        continue
    if hasattr(module, "NAME") and not (
        isinstance(getattr(module, "TITLE", None), str) and callable(getattr(module, "run", None))
    ):
        results[path.stem] = "error: a benchmark without TITLE or run()"
    else:
        results[path.stem] = "ok"
print(json.dumps(results))
"""


def test_every_benchmark_module_imports() -> None:
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, ",".join(PEERS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    results = json.loads(child.stdout.strip().splitlines()[-1])
    assert len(results) >= 20
    errors = {name: outcome for name, outcome in results.items() if outcome.startswith("error")}
    assert errors == {}
