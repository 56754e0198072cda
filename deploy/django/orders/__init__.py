"""A Django app with guarded Celery tasks (``orders/tasks.py``)."""
