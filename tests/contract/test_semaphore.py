"""Semaphore on both backends: a blocked acquire is woken by a release from another
thread, a slot not renewed expires; on Redis in real time, the heartbeat keeps a slot past
its TTL."""

import threading
import time

import pytest

import taskguard
from taskguard import ConcurrencyLimitReached

from .harness import REDIS_ONLY, TOPOLOGIES, Contract

pytestmark = TOPOLOGIES


def test_acquire_is_woken_by_a_release_from_another_thread(contract: Contract) -> None:
    sem = taskguard.connect(contract.backend).semaphore("wake", limit=1, ttl=30)
    holder = sem.acquire()
    timer = threading.Timer(0.2, holder.release)
    timer.start()
    started = time.monotonic()
    held = sem.acquire(timeout=10)
    elapsed = time.monotonic() - started
    timer.join()
    assert elapsed < 5  # the holder's TTL is 30 s and the timeout 10 s: only a wake-up fits
    assert held.owner != holder.owner
    assert held.release() is True


@REDIS_ONLY
def test_heartbeat_keeps_a_slot_past_its_ttl(contract: Contract) -> None:
    sem = taskguard.connect(contract.backend).semaphore("long", limit=1, ttl=0.3)
    held = sem.acquire(timeout=0)
    contract.elapse(1.2)  # four TTLs of real time, while the heartbeat thread renews
    with pytest.raises(ConcurrencyLimitReached):
        sem.acquire(timeout=0)
    assert held.release() is True
    assert sem.try_acquire().allowed


def test_without_renewal_a_slot_expires(contract: Contract) -> None:
    sem = taskguard.connect(contract.backend).semaphore("short", limit=1, ttl=0.3, renew=False)
    held = sem.acquire(timeout=0)
    contract.elapse(0.6)
    assert sem.try_acquire().allowed
    assert held.release(raise_on_lost=False) is False
