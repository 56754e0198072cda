"""Run taskguard's benchmarks: ``python -m benchmarks [--quick] [--only NAME]``.

Prints a table and a summary line, and writes every figure to
``benchmarks/results/<timestamp>.json``. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

from taskguard.testing import RedisServer

from . import (
    accuracy,
    breakers,
    clusterdrain,
    decisions,
    fairness,
    limitchange,
    locks,
    lockwake,
    observed,
    overhead,
    roundtrips,
    semaphore,
    semwake,
    statusscale,
    topologies,
    workconserving,
    writebehind,
)
from .harness import BenchResult, Context, machine_info

BENCHMARKS: dict[str, ModuleType] = {
    module.NAME: module
    for module in (
        accuracy,
        overhead,
        observed,
        decisions,
        roundtrips,
        locks,
        lockwake,
        semaphore,
        semwake,
        breakers,
        writebehind,
        workconserving,
        statusscale,
        limitchange,
        fairness,
        topologies,
        clusterdrain,
    )
}
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure taskguard against its goals (see docs/performance.md).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short durations: a smoke run, not figures to quote",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help="where the JSON file goes (default: benchmarks/results)",
    )
    return parser.parse_args(argv)


def _table(results: Sequence[BenchResult]) -> str:
    lines = []
    width = max([11, *(len(result.name) for result in results)])
    header = f"{'benchmark':<{width}} {'measurement':<44} {'value':>12} {'unit':<9} notes"
    lines += [header, "-" * len(header)]
    for result in results:
        for index, row in enumerate(result.rows):
            name = result.name if index == 0 else ""
            figure = _figure(row.value, row.decimals)
            lines.append(f"{name:<{width}} {row.label:<44} {figure:>12} {row.unit:<9} {row.note}")
        if result.goal is not None:
            verdict = "met" if result.goal.met else "MISSED"
            lines.append(f"{'':<{width}} {'goal: ' + result.goal.description:<44} {verdict:>12}")
    return "\n".join(lines)


def _figure(value: float, decimals: int | None) -> str:
    if decimals is not None:
        return f"{value:,.{decimals}f}"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _summary(results: Sequence[BenchResult], failed: Sequence[str], path: Path) -> str:
    with_goal = [r for r in results if r.goal is not None]
    missed = [r for r in with_goal if r.goal is not None and not r.goal.met]
    met = len(with_goal) - len(missed)
    parts = [f"{met}/{len(with_goal)} goals met"]
    if missed:
        parts.append("missed: " + ", ".join(r.name for r in missed))
    if failed:
        parts.append("FAILED to run: " + ", ".join(failed))
    try:
        shown = path.resolve().relative_to(Path.cwd())
    except ValueError:
        shown = path
    return f"taskguard benchmarks: {'; '.join(parts)}. Results: {shown}"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    names = args.only or list(BENCHMARKS)
    started = datetime.now(timezone.utc)
    results: list[BenchResult] = []
    failed: list[str] = []
    with RedisServer() as server:
        context = Context(quick=args.quick, server=server)
        client = context.client()
        machine = machine_info(client)
        client.close()
        for name in names:
            module = BENCHMARKS[name]
            print(f"running {name}: {module.TITLE} ...", file=sys.stderr, flush=True)
            began = time.monotonic()
            try:
                outcome: BenchResult | list[BenchResult] = module.run(context)
            except Exception:  # one broken benchmark must not lose the others' figures
                traceback.print_exc()
                failed.append(name)
                continue
            # A module may measure several figures with goals of their own (writebehind).
            measured = outcome if isinstance(outcome, list) else [outcome]
            for result in measured:
                result.seconds = (time.monotonic() - began) / len(measured)
            results.extend(measured)
            print(f"  done in {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)

    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    document = {
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine,
        "failed": failed,
        "benchmarks": {result.name: result.to_json() for result in results},
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    print()
    print(_table(results))
    print()
    print(_summary(results, failed, path))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
