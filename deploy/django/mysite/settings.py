"""Settings of the example project: only what Celery and taskguard need.

Configured from the environment, as in a container:

- ``CELERY_BROKER_URL``: the broker (also guard state unless ``TASKGUARD_REDIS_URL``);
- ``TASKGUARD_REDIS_URL``: where guard state lives;
- ``TASKGUARD_PREFIX``: the key prefix (default ``tg``) of everything taskguard writes.
"""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
USE_TZ = True

INSTALLED_APPS = [
    # Its system check validates CELERY_TASKGUARD and every guarded task of the
    # Celery app at `manage.py check` (and before runserver, migrate...).
    "taskguard.contrib.django",
    "orders",
]

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")

# Where the system check finds the Celery app, and with it the guarded tasks.
TASKGUARD_CELERY_APP = "mysite.celery:app"

CELERY_TASKGUARD = {
    "redis_url": os.environ.get("TASKGUARD_REDIS_URL", CELERY_BROKER_URL),
    "key_prefix": os.environ.get("TASKGUARD_PREFIX", "tg"),
    "tasks": {
        # Overrides the task's own RateLimit("5/s"): the provider raised our quota.
        "orders.tasks.send_confirmation": {"rate_limit": "10/s"},
    },
}
