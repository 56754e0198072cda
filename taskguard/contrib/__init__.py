"""Support for frameworks around Celery, each behind an optional extra.

* :mod:`taskguard.contrib.django`: a Django app whose system check validates taskguard's
  settings and guarded tasks at ``manage.py check`` (the ``django`` extra).

Nothing else in taskguard imports these packages or the frameworks they support.
"""

from __future__ import annotations

__all__: list[str] = []
