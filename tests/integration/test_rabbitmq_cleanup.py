"""What a fleet on RabbitMQ deletes after itself: its own queues and their exchanges, only."""

from __future__ import annotations

import uuid

from amqp.exceptions import NotFound
from kombu import Connection, Exchange, Queue

from tests.rabbitmq import amqp_available, delete_queues


def exists(connection: Connection, name: str) -> bool:
    channel = connection.channel()
    try:
        channel.queue_declare(queue=name, passive=True)
    except NotFound:
        return False
    else:
        return True
    finally:
        channel.close()


def test_only_the_named_queues_and_their_exchanges_go(amqp_url: str) -> None:
    ours, other = (f"tgq-{uuid.uuid4().hex[:12]}" for _ in range(2))
    with Connection(amqp_url) as connection:
        for name in (ours, other):
            with connection.channel() as channel:
                Queue(name, Exchange(name), name, channel=channel).declare()
        try:
            # The companion queue was never declared: skipped, not an error.
            assert delete_queues(amqp_url, [ours, f"{ours}.deferred"]) == [ours]
            assert not exists(connection, ours)
            assert exists(connection, other)
            assert delete_queues(amqp_url, [ours]) == []  # a second cleanup is a no-op
        finally:
            delete_queues(amqp_url, [ours, other])
        assert not exists(connection, other)


def test_probe_answers_false_where_nothing_listens() -> None:
    assert not amqp_available("amqp://guest:guest@127.0.0.1:1//")
