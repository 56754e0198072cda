"""Redis URLs of every topology: what they name, and how a bad one is refused (no server)."""

from __future__ import annotations

import pytest
import redis

import taskguard
from taskguard.backend.redis_errors import classify
from taskguard.backend.topology import parse_target
from taskguard.celery._settings import Settings


def test_one_server_urls_are_left_to_redis_py() -> None:
    for url in ("redis://h:1/2", "rediss://h/0", "unix:///run/redis.sock?db=1"):
        assert parse_target(url).topology == "single"


def test_a_cluster_url_names_its_seed_nodes_and_options() -> None:
    target = parse_target(
        "rediss+cluster://app:s3cret@n1:7000,n2,[::1]:7002/?ssl_cert_reqs=none&client_name=w"
    )
    assert target.topology == "cluster"
    assert target.nodes == (("n1", 7000), ("n2", 6379), ("::1", 7002))
    assert target.options["username"] == "app"
    assert target.options["password"] == "s3cret"
    assert target.options["ssl"] is True
    assert target.options["ssl_cert_reqs"] == "none"
    assert target.options["client_name"] == "w"
    assert "db" not in target.options


def test_a_sentinel_url_names_service_db_and_the_sentinels_credentials() -> None:
    target = parse_target(
        "redis+sentinel://:pw@s1:26380,s2/primary/3?sentinel_password=spw&sentinel_username=u"
    )
    assert target.topology == "sentinel"
    assert target.nodes == (("s1", 26380), ("s2", 26379))
    assert target.service == "primary"
    assert (target.options["db"], target.options["password"]) == (3, "pw")
    assert target.sentinel_options == {"password": "spw", "username": "u"}
    assert "sentinel_password" not in target.options


def test_tls_options_reach_the_sentinels_too() -> None:
    target = parse_target("rediss+sentinel://s1/m?ssl_ca_certs=/ca.pem")
    assert target.options["ssl"] is True
    assert target.sentinel_options == {"ssl": True, "ssl_ca_certs": "/ca.pem"}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://n1:7000/3", "database 0 only"),
        ("redis+sentinel://s1:26379/", "no Sentinel service"),
        ("redis+sentinel://s1/m/0/extra", "the path is"),
        ("redis+cluster://n1:port/", "bad port"),
        ("redis+cluster:///", "names no host"),
        ("redis+cluster://:pw@,n2/", "a host is empty"),
        ("mongodb://x", "unsupported Redis URL"),
    ],
)
def test_bad_urls_are_refused_with_the_password_hidden(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_target(url.replace("//", "//:hunter22@", 1) if "@" not in url else url)
    assert "hunter22" not in str(caught.value)


def test_connect_settings_and_the_cli_accept_the_new_schemes() -> None:
    # Nothing connects until the first call: a backend made while Redis is down works.
    for url in ("redis+cluster://127.0.0.1:1/", "redis+sentinel://127.0.0.1:1/m/0"):
        backend = taskguard.connect(url).backend
        assert backend.topology == url.split("+")[1].split(":")[0]  # type: ignore[attr-defined]
        backend.close()
        assert Settings.from_mapping({"redis_url": url}).redis_url == url


def test_a_cluster_without_a_reachable_node_is_an_outage() -> None:
    assert classify(redis.exceptions.RedisClusterUnreachableError("none")).kind == "outage"
    assert classify(redis.exceptions.SlotNotCoveredError("slot 7")).kind == "outage"
    assert classify(redis.exceptions.RedisClusterException("keys in 2 slots")).kind == "error"
