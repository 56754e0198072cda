"""taskguard's Sentry integration (see :mod:`taskguard.integrations.sentry`)::

import sentry_sdk
from taskguard.sentry import TaskguardIntegration

sentry_sdk.init(dsn="...", traces_sample_rate=0.1, integrations=[TaskguardIntegration()])
"""

from taskguard.integrations.sentry import TaskguardIntegration

__all__ = ["TaskguardIntegration"]
