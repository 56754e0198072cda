"""Helpers for testing code that uses taskguard: real worker processes, servers, waiting."""

from .servers import PostgresServer, RedisServer
from .waiting import wait_until
from .workers import WorkerProcess, worker_fleet

__all__ = ["PostgresServer", "RedisServer", "WorkerProcess", "wait_until", "worker_fleet"]
