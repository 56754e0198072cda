"""Helpers for testing code that uses taskguard: real worker processes, servers."""

from .workers import WorkerProcess, worker_fleet

__all__ = ["WorkerProcess", "worker_fleet"]
