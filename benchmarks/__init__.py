"""taskguard's benchmarks: run them all with ``python -m benchmarks`` (see docs/performance.md).

Each benchmark is one module with a ``NAME``, a ``TITLE`` and a ``run(context)`` returning a
:class:`~benchmarks.harness.BenchResult`:

* :mod:`benchmarks.accuracy`: the fleet-wide rate a ``RateLimit("20/s")`` achieves on three
  workers, next to Celery's per-worker ``rate_limit``;
* :mod:`benchmarks.overhead`: guarded no-op throughput divided by plain no-op throughput;
* :mod:`benchmarks.decisions`: standalone limiter decisions per second from one client,
  against ``PING`` and the ``limits`` package;
* :mod:`benchmarks.roundtrips`: Redis commands per guarded task, counted by the server;
* :mod:`benchmarks.locks`: lock acquire+release pairs per second from one client, against
  redis-py's ``Lock``, python-redis-lock and pottery's ``Redlock``;
* :mod:`benchmarks.lockwake`: how soon a blocked waiter holds a released lock, against
  python-redis-lock and redis-py;
* :mod:`benchmarks.semaphore`: concurrency-slot acquire+release pairs per second, against
  Dramatiq's ``ConcurrentRateLimiter``;
* :mod:`benchmarks.semwake`: how soon a blocked waiter holds a released slot;
* :mod:`benchmarks.workconserving`: whether deferral keeps a ``Concurrency(2)`` cap and a
  ``RateLimit("20/s")`` busy under a backlog, on Redis and RabbitMQ brokers.

Helpers: :mod:`benchmarks.harness` (results, timing), :mod:`benchmarks.servercount`
(counting on the server), :mod:`benchmarks.celeryrun` and :mod:`benchmarks.celeryapp`
(worker processes), :mod:`benchmarks.pairs` (acquire+release pairs) and
:mod:`benchmarks.handoff` (two-process wake latency).

Nothing here is imported by taskguard itself.
"""
