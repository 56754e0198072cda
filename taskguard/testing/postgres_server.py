"""A throwaway PostgreSQL cluster for tests and benchmarks (see :mod:`taskguard.testing.servers`).

:class:`PostgresServer` runs ``initdb`` and ``pg_ctl`` from the distribution's PostgreSQL
packages (as the ``postgres`` user when running as root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
import weakref
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from taskguard.urls import redact

from ._process import free_port, tail

__all__ = ["PostgresServer", "find_postgres_bindir", "postgres_available"]

_POSTGRES_INSTALL_HINT = (
    "no PostgreSQL server binaries (initdb, pg_ctl) found under /usr/lib/postgresql/*/bin "
    "or on PATH: install them (`apt-get install -y postgresql`)"
)


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
            import pwd  # Unix only: imported only where it is needed, as root

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
        return f"<PostgresServer {redact(self.dsn)} running={self._running}>"

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
            raise RuntimeError(f"{what} timed out after {timeout}s:\n{tail(self.logfile)}") from exc
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise RuntimeError(
                f"{what} failed with {result.returncode}:\n{output[-3000:]}\n{tail(self.logfile)}"
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
