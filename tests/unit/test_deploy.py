"""docker-compose.yml and deploy/ are checked, since no Docker engine runs here.

The Compose file is validated against the Compose specification's JSON schema (vendored
in tests/data/compose_spec.json, from the compose-spec project, Apache-2.0), and what it
refers to is checked against the repository: the files it mounts and builds from, the
options of the `taskguard drain` command it runs, the Redis settings write-behind needs,
and the example project the image runs (imported, its settings validated as a worker
would at start).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from taskguard.celery._runtime import runtime_for
from taskguard.cli.drain import drain

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "tests" / "data" / "compose_spec.json").read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    jsonschema.Draft201909Validator(SCHEMA).validate(compose)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("servics",), {}),  # a misspelt top-level key
        (("services", "worker", "depends_on", "redis", "condition"), "healthy"),
        (("services", "redis", "healthcheck", "retries"), "ten"),
    ],
)
def test_the_schema_check_catches_mistakes(
    compose: dict[str, Any], path: tuple[str, ...], value: object
) -> None:
    broken = copy.deepcopy(compose)
    target = broken
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft201909Validator(SCHEMA).validate(broken)


def test_files_the_compose_file_uses_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).is_file(), f"{name}: {source}"
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"


def test_dockerfile_copies_what_exists() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    sources = [
        part
        for line in dockerfile.splitlines()
        if line.startswith("COPY ")
        for part in line.split()[1:-1]
    ]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source


def test_drain_service_command_parses_with_the_real_cli(compose: dict[str, Any]) -> None:
    command = compose["services"]["drain"]["command"]
    assert command[:2] == ["taskguard", "drain"]
    context = drain.make_context("drain", list(command[2:]))
    assert context.params["namespaces"] == ("readings",)
    assert context.params["workers"] == 2


def test_redis_keeps_write_behind_records() -> None:
    conf = (ROOT / "deploy" / "redis.conf").read_text()
    settings = dict(
        line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#")
    )
    assert settings["appendonly"] == "yes"
    assert not settings["maxmemory-policy"].startswith("allkeys-")


def test_service_urls_point_at_the_compose_services(compose: dict[str, Any]) -> None:
    environment = compose["services"]["worker"]["environment"]
    for name in ("CELERY_BROKER_URL", "TASKGUARD_REDIS_URL", "TASKGUARD_DB_URL"):
        host = re.match(r"^\w+://(?:[^@/]*@)?([^:/]+)", environment[name])
        assert host is not None
        assert host.group(1) in compose["services"], name


@pytest.mark.usefixtures("isolated")  # the example's tasks must not join later apps
def test_example_project_loads_and_its_settings_validate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "memory://")
    monkeypatch.setenv("TASKGUARD_REDIS_URL", "memory://")
    monkeypatch.setenv("TASKGUARD_DB_URL", f"sqlite:///{tmp_path / 'example.db'}")
    spec = importlib.util.spec_from_file_location("proj", ROOT / "deploy/example/proj.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app = module.app
    try:
        app.finalize()
        validated = runtime_for(app).validate()
        assert {s.name for s in validated} >= {"proj.send_sms", "proj.record_reading"}
        assert runtime_for(app).settings.drain.enabled
    finally:
        app.close()
