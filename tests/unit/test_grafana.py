"""deploy/grafana/taskguard.json: valid JSON, a Grafana dashboard, and every metric it
queries is one taskguard exports (so a renamed metric cannot leave a panel empty)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from taskguard.integrations.prometheus import Metrics, QueueCollector

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "taskguard.json"
_METRIC = re.compile(r"\btaskguard_[a-z_]+")


def exported_sample_names() -> set[str]:
    """Every sample name taskguard can export (counters' _total, histograms' series)."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.admissions.labels("t", "g", "allowed")
    metrics.deferrals.labels("t", "r")
    metrics.admission_seconds.labels("t")
    metrics.lock_wait_seconds.labels("t")
    metrics.circuit_state.labels("b", "open")
    metrics.drain_rows.labels("ns", "written")
    names = {
        s.name
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    gauges = QueueCollector(None, ())  # type: ignore[arg-type]  # describe() reads nothing
    names |= {family.name for family in gauges.describe()}
    return names


def queries(dashboard: dict[str, Any]) -> list[str]:
    found = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    found += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return found


def test_the_dashboard_is_json_with_panels_and_queries() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "taskguard"
    assert dashboard["uid"] == "taskguard"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p.get("targets") for p in dashboard["panels"])


def test_every_metric_the_dashboard_queries_exists() -> None:
    exported = exported_sample_names()
    used = {
        name
        for query in queries(json.loads(DASHBOARD.read_text()))
        for name in _METRIC.findall(query)
    }
    assert used, "the dashboard queries no taskguard metric"
    assert sorted(used - exported) == []


def test_every_exported_metric_is_on_the_dashboard() -> None:
    used = {
        name.removesuffix("_bucket").removesuffix("_total")
        for query in queries(json.loads(DASHBOARD.read_text()))
        for name in _METRIC.findall(query)
    }
    families = {
        name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
        .removesuffix("_created").removesuffix("_total")
        for name in exported_sample_names()
    }  # fmt: skip
    assert sorted(families - used) == []
