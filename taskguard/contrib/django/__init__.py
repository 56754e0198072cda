"""taskguard for Django projects: add ``"taskguard.contrib.django"`` to ``INSTALLED_APPS``.

Its system check validates the taskguard settings (``CELERY_TASKGUARD`` and the
``CELERY_TASKGUARD_*`` keys) and every guarded task of the project's Celery app at
``manage.py check`` (and at ``runserver``, ``migrate`` and every other command that runs
the checks), so a bad limit fails the deploy instead of the worker's start. See
docs/django.md. Needs Django (the ``django`` extra).
"""

from __future__ import annotations

__all__: list[str] = []
