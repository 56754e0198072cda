"""Helpers for testing code that uses taskguard: real worker processes, servers."""

from .servers import PostgresServer, RedisServer
from .workers import WorkerProcess, worker_fleet

__all__ = ["PostgresServer", "RedisServer", "WorkerProcess", "worker_fleet"]
