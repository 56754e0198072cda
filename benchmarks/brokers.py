"""The brokers a benchmark's workers can consume from: the run's Redis, or RabbitMQ.

RabbitMQ is ``$TASKGUARD_BENCH_AMQP_URL``, by default the local server with the default
account. Other projects may use that server, so a benchmark only ever deletes the queues it
named itself (each name includes the run id).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from .celeryrun import client_app
from .harness import Context

__all__ = ["AMQP_URL", "Broker", "amqp_broker", "masked", "redis_broker"]

AMQP_URL = os.environ.get("TASKGUARD_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


@dataclass(frozen=True)
class Broker:
    """Where a scenario's queue lives, and how to delete it afterwards."""

    label: str
    url: str
    delete_queues: Callable[[list[str]], None]


def redis_broker(context: Context) -> Broker:
    """The run's throwaway Redis as the broker."""

    def delete(queues: list[str]) -> None:
        client = context.client()
        client.delete(*queues, *(f"_kombu.binding.{queue}" for queue in queues))
        client.close()

    return Broker("redis", context.server.url, delete)


def amqp_broker(url: str) -> Broker | None:
    """RabbitMQ at ``url``, or None when it does not answer."""
    app = client_app(url)
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=3)
    except Exception:  # any failure to connect means: not available here
        return None
    finally:
        app.close()

    def delete(queues: list[str]) -> None:
        app = client_app(url)
        try:
            with app.connection_for_write() as connection:
                for queue in queues:
                    for kind in ("queue", "exchange"):  # Celery declares one of each per name
                        channel = connection.channel()  # a failed passive declare closes it
                        try:
                            if kind == "queue":
                                channel.queue_declare(queue=queue, passive=True)
                                channel.queue_delete(queue)
                            else:
                                channel.exchange_declare(queue, "direct", passive=True)
                                channel.exchange_delete(queue)
                        except connection.channel_errors:
                            continue
        finally:
            app.close()

    return Broker("amqp", url, delete)


def masked(url: str) -> str:
    """``url`` with its password masked, for messages."""
    app = client_app(url)
    try:
        return str(app.connection_for_write().as_uri())  # the password masked
    finally:
        app.close()
