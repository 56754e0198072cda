"""taskguard's benchmarks: run them all with ``python -m benchmarks`` (see docs/performance.md).

Each benchmark is one module with a ``NAME``, a ``TITLE`` and a ``run(context)`` returning a
:class:`~benchmarks.harness.BenchResult`:

* :mod:`benchmarks.accuracy`: the fleet-wide rate a ``RateLimit("20/s")`` achieves on three
  workers, next to Celery's per-worker ``rate_limit``;
* :mod:`benchmarks.overhead`: guarded no-op throughput divided by plain no-op throughput;
* :mod:`benchmarks.decisions`: standalone limiter decisions per second from one client,
  against ``PING`` and the ``limits`` package;
* :mod:`benchmarks.roundtrips`: Redis commands per guarded task, counted by the server.

Nothing here is imported by taskguard itself.
"""
