"""The demo's Redis Cluster stage: its measures, table and verdict on made-up runs, and
the workers' wiring (guard state on the Cluster, the broker on the demo's Redis).

The stage itself (a real Cluster, real workers) runs in ``scripts/demo``.
"""

from __future__ import annotations

import dataclasses

import pytest

from taskguard.demo import cluster_stage
from taskguard.demo.cluster_report import (
    ClusterResult,
    cluster_held,
    cluster_rows,
    cluster_verdict,
    most_in_a_second,
)
from taskguard.demo.config import DemoConfig
from taskguard.demo.report import render_results
from taskguard.demo.tasks import _taskguard_settings


def _paced(first: float, count: int, rate: float) -> list[float]:
    return [first + n / rate for n in range(count)]


def _result(**changes: object) -> ClusterResult:
    held = ClusterResult(
        rate=4,
        per_tenant=10,
        starts={f"t{n}": _paced(100.0 + n * 0.01, 10, 4) for n in range(6)},
        evalsha={7001: 40, 7002: 12, 7003: 20},
        tenants_by_master={7001: 3, 7002: 1, 7003: 2},
        retries=0,
        deferrals=54,
        workers=3,
    )
    return dataclasses.replace(held, **changes)  # type: ignore[arg-type]


def test_most_in_a_second_counts_a_windows_edges() -> None:
    assert most_in_a_second([]) == 0
    assert most_in_a_second(_paced(0.0, 10, 4)) == 5  # 0, .25, .5, .75, 1.0
    assert most_in_a_second([0.0, 0.1, 0.2, 5.0]) == 3


def test_a_paced_run_spread_over_every_master_holds() -> None:
    result = _result()
    assert cluster_held(result)
    assert result.ran == result.expected == 60
    assert result.shares == pytest.approx([40 / 72, 20 / 72, 12 / 72])
    tag, sentence = cluster_verdict(result)
    assert tag == "HELD"
    assert "(3 / 2 / 1 tenants per master, as their keys hash)" in sentence
    assert "56% / 28% / 17%" in sentence
    assert "no tenant started more than 5 tasks in any second" in sentence
    assert cluster_rows(result)[1][1:] == (
        "6",
        "4/s",
        "60/60",
        "5",
        "54",
        "3 / 2 / 1",
        "56% / 28% / 17%",
    )


@pytest.mark.parametrize(
    "broken",
    [
        {"starts": {"t0": [100.0, 100.1, 100.2, 100.3, 100.4, 100.5]}},  # past the rate
        {"retries": 1},
        {"evalsha": {7001: 72, 7002: 0, 7003: 0}},  # one master did it all
        {"evalsha": {7001: 72}},
    ],
)
def test_each_failure_is_a_fail(broken: dict[str, object]) -> None:
    result = _result(**broken)
    assert not cluster_held(result)
    assert cluster_verdict(result)[0] == "FAIL"


def test_a_missing_or_doubled_run_is_a_fail() -> None:
    starts = {f"t{n}": _paced(100.0, 10, 4) for n in range(6)}
    starts["t0"] = starts["t0"][:-1]
    assert not cluster_held(_result(starts=starts))
    starts["t0"] = [*_paced(100.0, 10, 4), 200.0]
    assert not cluster_held(_result(starts=starts))


def test_a_stage_that_could_not_start_a_cluster_is_a_note() -> None:
    skipped = ClusterResult(rate=4, per_tenant=10, skipped="no Redis Cluster could start here")
    assert cluster_held(skipped)
    assert cluster_verdict(skipped)[0] == "note"
    text = render_results([], cluster=skipped)
    assert "Redis Cluster stage not run: no Redis Cluster could start here." in text
    assert "per-tenant RateLimit" not in text  # no table for a stage that did not run


def test_the_results_show_the_stage_and_its_verdict() -> None:
    text = render_results([], cluster=_result())
    assert "per-tenant RateLimit" in text
    assert "HELD  RateLimit(4/s, key='{tenant}')" in text


def test_the_stage_workers_keep_guard_state_on_the_cluster() -> None:
    config = DemoConfig.new("redis://127.0.0.1:6379/0")
    assert _taskguard_settings(config)["redis_url"] == config.redis_url
    on_cluster = dataclasses.replace(config, guard_url="redis+cluster://127.0.0.1:7001/")
    assert _taskguard_settings(on_cluster)["redis_url"] == "redis+cluster://127.0.0.1:7001/"
    assert DemoConfig.from_env(on_cluster.to_env()) == on_cluster
    assert DemoConfig.from_env(config.to_env()).guard_url == ""


def test_where_no_cluster_can_start_the_stage_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoCluster:
        def __init__(self, **_: object) -> None: ...

        def start(self) -> None:
            raise RuntimeError("no redis-cli binary found")

    monkeypatch.setattr(cluster_stage, "RedisCluster", NoCluster)
    said: list[str] = []
    result = cluster_stage.run_cluster_stage(
        None,
        DemoConfig.new("redis://127.0.0.1:1/0"),
        workers=3,
        concurrency=1,
        echo=lambda text, **_: said.append(text),
    )
    assert result.skipped == "no Redis Cluster could start here (no redis-cli binary found)"
    assert cluster_held(result)
    assert said[-1] == " not started"
