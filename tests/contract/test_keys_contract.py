"""Escaped keys on both backends (issue 11, finding 3): the scripts get them through KEYS
and every guard still holds; names and keys that the old schema mapped to one key are
separate state; on Redis, guard keys share one slot and the SCAN pattern finds exactly
a schema's keys, whatever glob characters its prefix holds."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from redis.crc import key_slot

import taskguard
from taskguard import GuardedTask, Lock
from taskguard.celery import runtime_for
from taskguard.guards.quota import Quota, QuotaLimiter
from taskguard.heartbeat import heartbeat_for
from taskguard.keys import KeySchema
from taskguard.units import MAX_BUCKET_SPAN

from .harness import REDIS_ONLY, Contract

#: Strings the old schema mangled or ran together, and some it passed through.
TRICKY = ["{a}", "(a)", "tenant:7", "50%", "50%25", "a\x00b", "line\nbreak", "é{ü}", ""]


def test_rate_limit_buckets_with_tricky_names_and_keys(contract: Contract) -> None:
    client = taskguard.connect(contract.backend)
    limiter = client.rate_limiter("api:{x}", "1/h")
    for key in TRICKY:
        assert limiter.try_acquire(key=key).allowed, key
    for key in TRICKY:
        assert not limiter.try_acquire(key=key).allowed, key
    # Before: name "api:{x}" with key "tenant:7" and name "api" with key "(x):tenant:7"
    # were one bucket, "api:(x):tenant:7".
    assert client.rate_limiter("api", "1/h").try_acquire(key="(x):tenant:7").allowed
    assert limiter.try_acquire().allowed  # no key is not the key ""


def test_locks_with_tricky_names_are_separate(contract: Contract) -> None:
    client = taskguard.connect(contract.backend)
    held = [client.lock(name, ttl=30).acquire(timeout=0) for name in TRICKY if name]
    assert len({h.op.key for h in held}) == len(held)
    for name in TRICKY[:-1]:
        assert client.lock(name).locked()
        assert not client.lock(name).try_acquire().allowed
    for h in held:
        assert h.release() is True
    assert not any(client.lock(name).locked() for name in TRICKY if name)


def test_semaphores_and_quotas_with_tricky_names(contract: Contract) -> None:
    client = taskguard.connect(contract.backend)
    sem = client.semaphore("{a}:x", limit=1)
    other = client.semaphore("(a):x", limit=1)
    with sem.acquire(timeout=0):
        assert not sem.try_acquire().allowed
        assert other.try_acquire().lease.release()  # type: ignore[union-attr]
    quota = QuotaLimiter(client, Quota("1/day", name="q:{t}"))
    for key in TRICKY:
        assert quota.try_acquire(key=key).allowed, key
        assert quota.remaining(key=key) == 0
    assert QuotaLimiter(client, Quota("1/day", name="q")).try_acquire(key="(t):").allowed


def test_breakers_with_tricky_names_keep_their_own_state(contract: Contract) -> None:
    client = taskguard.connect(contract.backend)
    tripped = client.circuit_breaker("geo:{eu}", consecutive_failures=1, window=5)
    lookalike = client.circuit_breaker("geo:(eu)", consecutive_failures=1, window=5)
    with pytest.raises(ZeroDivisionError):
        tripped.call(lambda: 1 / 0)
    assert tripped.state == "open"
    assert lookalike.state == "closed"
    assert lookalike.call(lambda: "ok") == "ok"


def test_the_widest_bucket_keeps_exact_counts(contract: Contract) -> None:
    """A bucket at every bound at once: a million calls a second, refilling in 100 years,
    and its ``remaining`` is still exact (it is above 2**51 in the script's doubles)."""
    burst = round(MAX_BUCKET_SPAN * 1_000_000)
    client = taskguard.connect(contract.backend)
    limiter = client.rate_limiter("widest", "1000000/s", burst=burst)
    assert limiter.try_acquire(cost=7).remaining == burst - 7
    slow = client.rate_limiter("slowest", "1/365d", burst=100)
    assert [slow.try_acquire().remaining for _ in range(2)] == [99, 98]


@pytest.fixture
def app(contract: Contract) -> Iterator[Celery]:
    app = Celery("keys", broker="memory://", set_as_current=False)
    app.conf.task_default_queue = f"keys-{uuid.uuid4().hex[:8]}"
    app.conf.taskguard = {"redis_url": "memory://"}
    runtime_for(app).backend = contract.backend
    try:
        yield app
    finally:
        heartbeat_for(contract.backend).stop()
        app.close()


def test_braces_and_parentheses_are_two_unique_claims(app: Celery, contract: Contract) -> None:
    @app.task(shared=False, base=GuardedTask, guards=[Lock(key="{doc}", mode="until_executing")])
    def render(doc: str) -> None: ...

    first = render.apply_async(("(a)",))
    second = render.apply_async(("{a}",))
    assert second.id != first.id
    assert render.apply_async(("{a}",)).id == second.id  # a real duplicate still is one
    keys = contract.backend.keys
    assert contract.backend.owner(keys.unique(render.name, "(a)")) == first.id
    assert contract.backend.owner(keys.unique(render.name, "{a}")) == second.id


@REDIS_ONLY
def test_guard_keys_share_one_slot_and_scan_finds_them(contract: Contract) -> None:
    client = taskguard.connect(contract.backend)
    client.rate_limiter("r:{1}", "1/h").try_acquire(key="{k}:1")
    client.lock("l{2}", ttl=30).acquire(timeout=0)
    client.semaphore("s:3}", limit=2).acquire(timeout=0)
    assert contract.client is not None
    keys = contract.backend.keys
    written = {k.decode() for k in contract.client.scan_iter(match=keys.pattern())}
    assert len(written) >= 4  # a bucket, a lock and its fence, a slot set
    assert written == {k.decode() for k in contract.client.scan_iter(f"{contract.prefix}:*")}
    assert len({key_slot(k.encode()) for k in written}) == 1
    assert all(k.count("{") == 1 and k.count("}") == 1 for k in written)


@REDIS_ONLY
def test_the_scan_pattern_takes_glob_characters_literally(contract: Contract) -> None:
    client: redis.Redis = contract.client  # type: ignore[assignment]
    base = contract.prefix  # everything below starts with it: the fixture deletes it all
    schemas = [
        KeySchema(prefix, tag)
        for prefix in (f"{base}:a*", f"{base}:ab", f"{base}:a?", f"{base}:a[b]", f"{base}:a\\")
        for tag in (None, "t", "t:c:ns:0", "t*")
    ]
    made = {}
    for schema in schemas:
        made[schema] = [
            schema.lock("n", "k"),
            schema.guard("q", "n"),
            schema.cache_value("ns", 0, "k"),
            schema.cache_stream("ns", 1),
            schema.drain_pools(),
        ]
        for key in made[schema]:
            client.set(key, 1, ex=60)
    for schema in schemas:
        found = {k.decode() for k in client.scan_iter(match=schema.pattern(), count=1000)}
        assert found == set(made[schema]), schema
