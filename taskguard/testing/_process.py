"""Port and process helpers shared by the throwaway servers of taskguard.testing."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from pathlib import Path

__all__ = ["free_port", "kill", "tail"]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    Another process may still take it before the caller binds it; servers here retry
    with a new port when that happens and no port was requested explicitly.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def kill(process: subprocess.Popen[bytes]) -> None:
    """Kill ``process`` if it still runs, and reap it (waiting at most 5 seconds)."""
    if process.poll() is None:
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)


def tail(path: Path, size: int = 3000) -> str:
    """The last ``size`` characters of the log file at ``path`` ("" if there is none)."""
    try:
        return path.read_text(errors="replace")[-size:]
    except FileNotFoundError:
        return ""
