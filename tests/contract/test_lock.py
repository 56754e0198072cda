"""DistributedLock on both backends: a blocked acquire is woken by the release, a lock
not renewed expires; on Redis in real time, the heartbeat keeps a lock past its TTL and
a late holder's release spares the new owner."""

import threading
import time

import pytest

import taskguard
from taskguard.errors import LockHeld, LockLost
from taskguard.guards.lock import HeldLock

from .harness import REDIS_ONLY, TOPOLOGIES, Contract

pytestmark = TOPOLOGIES


def release_later(held: HeldLock, delay: float = 0.2) -> threading.Timer:
    timer = threading.Timer(delay, held.release)
    timer.start()
    return timer


def test_blocking_acquire_is_woken_by_release(contract: Contract) -> None:
    backend = contract.backend
    holder = taskguard.connect(backend).lock("wake", ttl=30).acquire()
    timer = release_later(holder)
    started = time.monotonic()
    held = taskguard.connect(backend).lock("wake", ttl=30).acquire(timeout=10)
    elapsed = time.monotonic() - started
    timer.join()
    assert elapsed < 5  # the holder's TTL is 30 s and the timeout 10 s: only a wake-up fits
    assert held.fencing_token > holder.fencing_token
    assert held.release()


@REDIS_ONLY
def test_release_after_takeover_on_redis(contract: Contract) -> None:
    redis_backend = contract.backend
    late = taskguard.connect(redis_backend).lock("job", ttl=0.2, renew=False).acquire()
    contract.elapse(0.35)
    taker = taskguard.connect(redis_backend).lock("job", ttl=30, renew=False).acquire(timeout=0)
    with pytest.raises(LockLost):
        late.release()
    assert redis_backend.owner(redis_backend.keys.lock("job")) == taker.owner
    assert taker.release()


@REDIS_ONLY
def test_heartbeat_keeps_a_held_lock_past_its_ttl(contract: Contract) -> None:
    redis_backend = contract.backend
    held = taskguard.connect(redis_backend).lock("long", ttl=0.3).acquire()
    contract.elapse(1.2)  # four TTLs of real time, while the heartbeat thread renews
    with pytest.raises(LockHeld):
        taskguard.connect(redis_backend).lock("long", ttl=0.3).acquire(timeout=0)
    assert held.release() is True
    assert not taskguard.connect(redis_backend).lock("long").locked()


def test_without_renewal_the_lock_expires(contract: Contract) -> None:
    backend = contract.backend
    held = taskguard.connect(backend).lock("short", ttl=0.3, renew=False).acquire()
    contract.elapse(0.6)
    assert not taskguard.connect(backend).lock("short").locked()
    assert held.release(raise_on_lost=False) is False
