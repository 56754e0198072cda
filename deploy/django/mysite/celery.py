"""The project's Celery app, configured from the Django settings (``CELERY_*`` keys).

Run a worker from deploy/django::

    celery -A mysite worker -l INFO
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

app = Celery("mysite")
# Every CELERY_* setting configures Celery; CELERY_TASKGUARD configures taskguard.
app.config_from_object("django.conf:settings", namespace="CELERY")
# Imports orders/tasks.py (each installed app's tasks module), in workers and in the
# taskguard system check alike.
app.autodiscover_tasks()
