"""What only Redis Cluster and Sentinel can break, on the session's loopback topologies:
the worker-start ACL probe (a cluster pipeline cannot carry ``SCRIPT LOAD``), a
least-privilege user created on every node, scripts reloaded on every master after
``SCRIPT FLUSH``, and events over sharded pub/sub."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
import redis.cluster
from redis.crc import key_slot

import taskguard
from taskguard.backend.acl import acl_rules, missing_permissions
from taskguard.backend.redis import RedisBackend
from taskguard.celery._bootsteps import check_backend
from taskguard.errors import ConfigurationError
from tests.unit.test_cache_fakes import MemoryStore

from .harness import TOPOLOGIES_ONLY, Contract

pytestmark = TOPOLOGIES_ONLY
PASSWORD = "s3cret-pw"


@pytest.fixture
def backend(contract: Contract) -> RedisBackend:
    assert isinstance(contract.backend, RedisBackend)
    return contract.backend


@pytest.fixture
def acl_user(contract: Contract) -> Iterator[str]:
    """A user name, created by the test on every node (a cluster's ACLs are per node;
    Sentinel's master and replica too), deleted after it."""
    name = f"tg-{uuid.uuid4().hex[:8]}"
    yield name
    for client in _nodes(contract):
        client.execute_command("ACL", "DELUSER", name)


def _nodes(contract: Contract) -> list[redis.Redis]:
    client = contract.client
    if isinstance(client, redis.cluster.RedisCluster):
        return [client.get_redis_connection(node) for node in client.get_nodes()]
    return [client]  # the master; the probe runs there


def _with_user(contract: Contract, name: str, *rules: str) -> taskguard.Client:
    for client in _nodes(contract):
        client.execute_command("ACL", "SETUSER", name, "reset", "on", f">{PASSWORD}", *rules)
    assert contract.url is not None
    scheme, rest = contract.url.split("://", 1)
    return taskguard.connect(f"{scheme}://{name}:{PASSWORD}@{rest}", prefix=contract.prefix)


def test_the_least_privilege_user_passes_the_worker_start_probe(
    contract: Contract, acl_user: str
) -> None:
    cluster = contract.kind == "cluster"
    client = _with_user(contract, acl_user, *acl_rules(contract.prefix, cluster=cluster))
    backend = client.backend
    assert isinstance(backend, RedisBackend)
    assert missing_permissions(backend, streams=True) == []
    check_backend(backend, "the topology", streams=True)  # does not raise
    assert client.rate_limiter("api", "100/s").try_acquire().allowed
    client.close()


def test_a_missing_permission_is_named_on_the_topology(contract: Contract, acl_user: str) -> None:
    cluster = contract.kind == "cluster"
    rules = [r for r in acl_rules(contract.prefix, cluster=cluster) if r != "+@scripting"]
    client = _with_user(contract, acl_user, *rules)
    backend = client.backend
    assert isinstance(backend, RedisBackend)
    missing = missing_permissions(backend)
    assert any("SCRIPT LOAD" in line or "EVALSHA" in line for line in missing), missing
    with pytest.raises(ConfigurationError, match="may not run what taskguard needs"):
        check_backend(backend, "the topology", streams=False)
    client.close()


def test_scripts_are_loaded_again_after_a_script_flush(
    contract: Contract, backend: RedisBackend
) -> None:
    limiter = taskguard.connect(backend).rate_limiter("flush", "2/m")
    assert limiter.try_acquire().allowed
    for client in _nodes(contract):
        client.script_flush()
    assert not limiter.try_acquire().allowed  # NOSCRIPT, loaded again, and enforced


def test_events_travel_on_the_topology(backend: RedisBackend) -> None:
    client = taskguard.connect(backend)
    with client.events(types=["limit_changed"], timeout=1.0) as stream:
        client.set_limit("api", "10/s")
        received = list(stream)
    assert [event.fields["action"] for event in received] == ["set"]
    assert backend.sharded_pubsub is (backend.topology == "cluster")


@pytest.mark.topologies("cluster", only=True)
def test_a_script_sent_to_a_node_that_does_not_own_the_slot_still_runs(
    contract: Contract, backend: RedisBackend
) -> None:
    limiter = taskguard.connect(backend).rate_limiter("moved", "2/m")
    assert limiter.try_acquire().allowed  # builds the route of the guard slot
    routes = backend._routes  # the shortcut under test; no public door to mistarget it
    assert routes is not None
    cluster = contract.client
    assert isinstance(cluster, redis.cluster.RedisCluster)
    key = backend.keys.rate_limit("moved")
    owner = cluster.get_node_from_key(key)
    other = next(node for node in cluster.get_primaries() if node.name != owner.name)
    # As after a slot migration: the route names a master that answers MOVED.
    routes._nodes[key_slot(key.encode())] = cluster.get_redis_connection(other)
    assert not limiter.try_acquire().allowed  # ran on the owner, and enforced
    assert routes._nodes == {}  # forgotten: the next call finds the owner again
    assert not limiter.try_acquire().allowed
    assert routes.client_for(key).connection_pool.connection_kwargs["port"] == owner.port


@pytest.mark.topologies("cluster", only=True)
def test_a_batch_meeting_one_master_without_the_script_runs_each_call_once(
    contract: Contract, backend: RedisBackend
) -> None:
    cache = taskguard.connect(backend).cache(
        "orders", ttl=60, strategy="write-behind", store=MemoryStore(), partitions=8
    )
    cache.set_many({"warm": 0})  # every master of the batch's partitions loads the script
    cluster = contract.client
    assert isinstance(cluster, redis.cluster.RedisCluster)
    # One master forgets it (a restart, a promoted replica): its calls of the next batch
    # answer NOSCRIPT while the other masters run theirs.
    cluster.get_redis_connection(cluster.get_primaries()[0]).script_flush()
    values = {f"k{i}": i for i in range(40)}
    cache.set_many(values)
    streams = [backend.keys.cache_stream("orders", p) for p in range(cache.partitions)]
    assert sum(cluster.xlen(stream) for stream in streams) == 41  # each write queued once
    assert cache.get_many(values) == values
