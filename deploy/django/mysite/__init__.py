"""The example Django project (docs/django.md).

Importing the Celery app here, as Celery's Django guide does, creates it whenever Django
loads the settings, so ``@shared_task`` tasks bind to it.
"""

from .celery import app as celery_app

__all__ = ["celery_app"]
