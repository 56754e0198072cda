"""The module worker subprocesses load: ``celery -A taskguard.demo.app worker``.

It builds the demo app from the environment the ``taskguard demo`` parent passes to its
workers (see :meth:`taskguard.demo.config.DemoConfig.to_env`).
"""

from __future__ import annotations

from .config import DemoConfig
from .tasks import create_app

__all__ = ["app"]

app = create_app(DemoConfig.from_env())
