"""RabbitMQ for the integration tests: is one there, and remove what a test declared on it.

Integration fleets run on RabbitMQ only in the tests that ask for both brokers
(``both_brokers`` in tests/integration/conftest.py). The broker is found at
``$TASKGUARD_TEST_AMQP_URL``, else at :data:`DEFAULT_AMQP_URL`; scripts/test starts a
throwaway node when neither answers and ``rabbitmq-server`` can be had. scripts/test also
runs :func:`amqp_available` as its probe::

    python -c 'from tests.rabbitmq import amqp_available; ...' URL

A broker may be shared (the machine's own RabbitMQ): a test deletes only the queues whose
names it made up, and the exchanges Celery named after them, never anything else.
"""

from __future__ import annotations

from collections.abc import Iterable

from amqp.exceptions import AMQPError, NotFound
from kombu import Connection
from kombu.exceptions import OperationalError

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"

__all__ = ["DEFAULT_AMQP_URL", "amqp_available", "delete_queues"]


def amqp_available(url: str, timeout: float = 1.0) -> bool:
    """Whether a broker at ``url`` accepts an AMQP connection (and its login).

    One attempt, no retries: a port nobody listens on answers False at once.
    """
    connection = Connection(url, connect_timeout=timeout)
    try:
        connection.ensure_connection(max_retries=0, timeout=timeout)
    except (OSError, OperationalError, AMQPError, *connection.connection_errors):
        return False  # nothing listens, no AMQP there, or the login is refused
    else:
        return True
    finally:
        connection.release()


def delete_queues(url: str, names: Iterable[str]) -> list[str]:
    """Delete the queues ``names``, and the exchange Celery declared for each under the
    same name, from the broker at ``url``; return the names that existed.

    A name that does not exist is skipped. RabbitMQ 3.x answers ``queue.delete`` of a
    missing queue with OK; other brokers (and the AMQP spec) close the channel with
    ``404 NOT_FOUND``. So each name is first looked up with a passive declare on a
    channel of its own, and only an existing one is deleted.
    """
    deleted: list[str] = []
    with Connection(url, connect_timeout=5) as connection:
        for name in names:
            if _exists(connection, name, "queue"):
                with connection.channel() as channel:
                    channel.queue_delete(name)
                deleted.append(name)
            if _exists(connection, name, "exchange"):
                with connection.channel() as channel:
                    channel.exchange_delete(name)
    return deleted


def _exists(connection: Connection, name: str, kind: str) -> bool:
    """Whether the queue or exchange ``name`` exists (a passive declare; the broker closes
    the channel when it does not, so the channel is this check's own)."""
    channel = connection.channel()
    try:
        if kind == "queue":
            channel.queue_declare(queue=name, passive=True)
        else:
            channel.exchange_declare(exchange=name, type="direct", passive=True)
    except NotFound:
        return False
    else:
        return True
    finally:
        channel.close()
