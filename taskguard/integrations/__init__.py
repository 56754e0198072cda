"""Optional integrations: Sentry and Prometheus.

Each imports its third-party package only when used, and says which extra installs it
when it is missing. They watch taskguard through :mod:`taskguard._instrument` (spans
around work) and :mod:`taskguard.signals` (events):

* :mod:`taskguard.integrations.sentry`: ``TaskguardIntegration`` for ``sentry_sdk.init``
  (also importable as ``taskguard.sentry.TaskguardIntegration``);
* :mod:`taskguard.integrations.prometheus`: the ``taskguard_*`` metrics, and the HTTP
  endpoint a worker (setting ``metrics``) or ``taskguard drain --metrics-port`` serves.
"""

from __future__ import annotations

__all__: list[str] = []
