"""The public surface is deliberate: this list changes only on purpose."""

import taskguard


def test_exported_names() -> None:
    assert taskguard.__all__ == [
        "AlreadyQueued",
        "Backend",
        "BackendError",
        "BackendUnavailable",
        "Breaker",
        "CacheService",
        "CircuitBreaker",
        "CircuitOpen",
        "Client",
        "Concurrency",
        "ConcurrencyControl",
        "ConcurrencyLimitReached",
        "ConfigurationError",
        "Debounce",
        "Decision",
        "DeferralExhausted",
        "DistributedLock",
        "DrainPool",
        "Guard",
        "GuardDenied",
        "GuardedTask",
        "HeldLease",
        "HeldLock",
        "HotPathBreaker",
        "Lock",
        "LockHeld",
        "LockLost",
        "MemoryBackend",
        "Quota",
        "QuotaLimiter",
        "Rate",
        "RateLimit",
        "RateLimited",
        "RateLimiter",
        "RedisBackend",
        "Semaphore",
        "Sessions",
        "StoreError",
        "Superseded",
        "TaskGuardError",
        "UnstorableValue",
        "WriteBehindFull",
        "__version__",
        "connect",
        "parse_rate",
    ]
    assert sorted(taskguard.__all__) == taskguard.__all__
    for name in taskguard.__all__:
        assert hasattr(taskguard, name), name


def test_version_comes_from_package_metadata() -> None:
    from importlib.metadata import version

    assert taskguard.__version__ == version("celery-taskguard")


def test_error_tree() -> None:
    from taskguard import errors

    for name in (
        "ConfigurationError",
        "BackendUnavailable",
        "BackendError",
        "GuardDenied",
        "DeferralExhausted",
        "StoreError",
        "WriteBehindFull",
        "UnstorableValue",
    ):
        assert issubclass(getattr(errors, name), errors.TaskGuardError)
    for name in ("RateLimited", "LockHeld", "ConcurrencyLimitReached", "CircuitOpen"):
        assert issubclass(getattr(errors, name), errors.GuardDenied)
    denied = errors.RateLimited("no", guard="RateLimit('1/s')", key="k", retry_after=0.5)
    assert (denied.guard, denied.key, denied.retry_after) == ("RateLimit('1/s')", "k", 0.5)
    exc = errors.ConfigurationError("bad", task="t", field="f")
    assert str(exc) == "[task 't', field 'f'] bad"
    assert str(exc.for_task("u")) == "[task 'u', field 'f'] bad"
    assert not issubclass(errors.BackendError, errors.BackendUnavailable)
    failed = errors.BackendError("NOPERM no", code="NOPERM", what="admission")
    named = failed.naming(("RateLimit('1/s')", "Concurrency(2)"))
    assert (named.code, named.what) == ("NOPERM", "admission")
    assert named.guards == ("RateLimit('1/s')", "Concurrency(2)")
    assert str(named) == "NOPERM no [guards: RateLimit('1/s'), Concurrency(2)]"
    assert errors.BackendUnavailable("full", code="OOM").refuses_writes
    assert not errors.BackendUnavailable("down").refuses_writes
