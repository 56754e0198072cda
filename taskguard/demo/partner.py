"""The partner API of the breaker stage: a tiny local HTTP stub whose health the demo switches.

It runs in the demo's own process (a threaded :mod:`http.server` on ``127.0.0.1``, on a
free port) and keeps its own log of every call it receives: that log, not the workers'
word, is what shows how hard the fleet hit the partner while the breaker was open.
"""

from __future__ import annotations

import http.server
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

__all__ = ["PartnerCall", "PartnerStub"]


@dataclass(frozen=True)
class PartnerCall:
    """One call the stub received.

    Attributes:
        t: When it arrived (this process's ``time.time()``).
        status: The HTTP status it was answered with (200, or 500 while failing).
        task: The calling task's id (from the ``task`` query parameter), if given.
    """

    t: float
    status: int
    task: str


class PartnerStub:
    """A local HTTP service: healthy (200) or failing (500), as :meth:`set_healthy` says.

    Example:
        >>> with PartnerStub() as stub:  # doctest: +SKIP
        ...     stub.set_healthy(False)
        ...     urllib.request.urlopen(stub.url)  # HTTPError 500, logged in stub.calls
    """

    def __init__(self) -> None:
        self.healthy = True
        self.calls: list[PartnerCall] = []
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` once started."""
        if self._server is None:
            raise RuntimeError("the partner stub is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def set_healthy(self, healthy: bool) -> float:
        """Switch the stub's health; returns when (``time.time()``) it took effect."""
        with self._lock:
            self.healthy = healthy
            return time.time()

    def _answer(self, path: str) -> int:
        task = parse_qs(urlsplit(path).query).get("task", [""])[0]
        with self._lock:
            status = 200 if self.healthy else 500
            self.calls.append(PartnerCall(time.time(), status, task))
        return status

    def start(self) -> PartnerStub:
        """Serve on a free port of 127.0.0.1, from a daemon thread."""
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status = stub._answer(self.path)
                body = b"ok" if status == 200 else b"partner down"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return None  # its own call log is kept in stub.calls

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="taskguard-demo-partner", daemon=True
        )
        self._thread.start()
        return self

    def calls_snapshot(self) -> list[PartnerCall]:
        """A copy of the call log so far."""
        with self._lock:
            return list(self.calls)

    def close(self) -> None:
        """Stop serving and free the port."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = self._thread = None

    def __enter__(self) -> PartnerStub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
