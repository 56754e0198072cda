"""Guarded tasks of the ``orders`` app, found by ``app.autodiscover_tasks()``."""

from celery import shared_task

from taskguard import GuardedTask, Lock, RateLimit


@shared_task(base=GuardedTask, guards=[RateLimit("5/s")])
def send_confirmation(order_id: int) -> str:
    """Mails an order confirmation: the mail provider takes so many a second from all
    workers together (CELERY_TASKGUARD raises it to 10/s)."""
    return f"confirmation for order {order_id} sent"


@shared_task(base=GuardedTask, guards=[Lock(key="{order_id}")])
def rebuild_invoice(order_id: int) -> str:
    """Rebuilds an order's invoice PDF: one rebuild per order at a time, fleet-wide; a
    second one waits for the first to finish."""
    return f"invoice for order {order_id} rebuilt"
