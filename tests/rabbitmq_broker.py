"""A test's own virtual host on the session's RabbitMQ node, and a consumer counting messages.

Shared by the fault tests that relay rows to a real broker (:mod:`tests.faults.test_broker_faults`,
:mod:`tests.faults.test_poison`); ``tests/faults/conftest.py`` makes the fixtures ``broker_user``,
``broker`` and ``consumer`` theirs. The app reaches the broker as a user with a password
(:attr:`Broker.app_url`), the tests as the administrator (:attr:`Broker.admin_url`); the
consumer records the ``message_id`` of every message delivered to the queue :data:`QUEUE`.
"""

from __future__ import annotations

import collections
import threading
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pika
import pika.exceptions
import pytest

from tests.rabbitmq_node import RabbitNode

PASSWORD = "br0ker-s3cret-Pw"
EXCHANGE = "signalbus"
QUEUE = "orders"


@pytest.fixture(scope="module")
def broker_user(rabbit_node: RabbitNode) -> Iterator[str]:
    """A broker user with a password, for the app (the tests use the admin URL)."""
    name = f"signalbus-faults-{uuid.uuid4().hex[:8]}"
    rabbit_node.ctl("add_user", name, PASSWORD)
    try:
        yield name
    finally:
        rabbit_node.ctl("delete_user", name)


class Broker:
    """The test's virtual host on the session's node: admin operations on it, the app's URL."""

    def __init__(self, node: RabbitNode, admin_url: str, user: str) -> None:
        self.node = node
        self.admin_url = admin_url
        parts = urlsplit(admin_url)
        self.vhost = unquote(parts.path[1:])
        netloc = f"{quote(user, safe='')}:{quote(PASSWORD, safe='')}@{parts.hostname}"
        self.app_url = urlunsplit(parts._replace(netloc=f"{netloc}:{parts.port or 5672}"))

    def run(self, action: Callable[[pika.adapters.blocking_connection.BlockingChannel], object]):
        """Run *action* on a channel of a short-lived admin connection."""
        connection = pika.BlockingConnection(pika.URLParameters(self.admin_url))
        try:
            return action(connection.channel())
        finally:
            if connection.is_open:
                connection.close()

    def declare(self, *routing_keys: str) -> None:
        """Declare the app's topic exchange and the counted queue, bound with *routing_keys*."""

        def declare(channel: pika.adapters.blocking_connection.BlockingChannel) -> None:
            channel.exchange_declare(EXCHANGE, "topic", durable=True)
            channel.queue_declare(QUEUE, durable=True)
            for key in routing_keys:
                channel.queue_bind(QUEUE, EXCHANGE, key)

        self.run(declare)

    def bind(self, queue: str, routing_key: str) -> None:
        self.run(lambda channel: channel.queue_bind(queue, EXCHANGE, routing_key))

    def declare_full_queue(self, name: str, capacity: int) -> None:
        """Bind a queue of *capacity* messages that rejects more, and fill it up."""

        def declare(channel: pika.adapters.blocking_connection.BlockingChannel) -> None:
            arguments = {"x-max-length": capacity, "x-overflow": "reject-publish"}
            channel.queue_declare(name, durable=True, arguments=arguments)
            channel.confirm_delivery()
            for _ in range(capacity):
                channel.basic_publish("", name, b"filler")
            channel.queue_bind(name, EXCHANGE, "order.#")

        self.run(declare)

    def purge(self, queue: str) -> None:
        self.run(lambda channel: channel.queue_purge(queue))

    def close_all_connections(self) -> None:
        self.node.ctl("close_all_connections", "--vhost", self.vhost, "broker fault test")


@pytest.fixture
def broker(rabbit_node: RabbitNode, rabbit_vhost_url: str, broker_user: str) -> Broker:
    broker = Broker(rabbit_node, rabbit_vhost_url, broker_user)
    rabbit_node.ctl("set_permissions", "-p", broker.vhost, broker_user, ".*", ".*", ".*")
    return broker


class Consumer:
    """Counts the message ids delivered to a queue; reconnects whenever the broker drops it.

    Messages are acknowledged after they are counted, so none is lost when the
    connection drops; one the broker redelivers after that (``redelivered``)
    is not counted again: only duplicates the publisher sent are.
    """

    def __init__(self, url: str, queue: str) -> None:
        self.url = url
        self.queue = queue
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def ids(self) -> set[str]:
        with self._lock:
            return set(self.counts)

    def duplicates(self) -> dict[str, int]:
        with self._lock:
            return {message_id: n for message_id, n in self.counts.items() if n > 1}

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._consume()
            except (pika.exceptions.AMQPError, OSError):
                self._stopping.wait(0.1)  # the broker is down or restarting

    def _consume(self) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=2000)
            channel.basic_consume(self.queue, self._on_message)
            while not self._stopping.is_set():
                connection.process_data_events(time_limit=0.05)
        finally:
            if connection.is_open:
                connection.close()

    def _on_message(self, channel, method, properties, _body: bytes) -> None:  # type: ignore[no-untyped-def]
        message_id = properties.message_id
        with self._lock:
            if not (method.redelivered and message_id in self.counts):
                self.counts[message_id] += 1
        channel.basic_ack(method.delivery_tag)


@pytest.fixture
def consumer(broker: Broker) -> Iterator[Consumer]:
    broker.declare()  # the queue must exist before the consumer starts
    consumer = Consumer(broker.admin_url, QUEUE)
    yield consumer
    consumer.stop()
