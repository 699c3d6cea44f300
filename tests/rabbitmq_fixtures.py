"""pytest fixtures for tests against a real RabbitMQ broker.

Load them with ``pytest_plugins = ["tests.rabbitmq_fixtures"]`` in ``tests/conftest.py``.
The broker URL is ``$SIGNALBUS_TEST_RABBITMQ_URL``, by default
``amqp://guest:guest@127.0.0.1:5672/%2F``. If the broker does not answer, every test that
needs it fails (it is not skipped) with instructions to start it.

The tests only speak AMQP to that broker, in queues of their own: they never administer
it. Those that need to (users, virtual hosts, closing connections, stopping the broker)
use the session's own node from :mod:`tests.rabbitmq_node`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from signalbus.rabbitmq import redact_url
from tests.proxies import FreezableProxy

AMQP_URL_ENV = "SIGNALBUS_TEST_RABBITMQ_URL"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """URL of the test broker; fails the test if the broker does not answer."""
    url = os.environ.get(AMQP_URL_ENV) or DEFAULT_AMQP_URL
    parameters = pika.URLParameters(url)
    parameters.socket_timeout = 5
    parameters.connection_attempts = 1
    try:
        pika.BlockingConnection(parameters).close()
    except Exception as exc:
        password = urlsplit(url).password or "\0"
        reason = repr(exc).replace(password, "***")
    else:
        return url
    pytest.fail(
        f"RabbitMQ does not answer at {redact_url(url)} ({reason}). Start it with "
        f"`rabbitmq-server -detached` (as root), or point {AMQP_URL_ENV} at a broker.",
        pytrace=False,
    )


@pytest.fixture
def amqp_channel(amqp_url: str) -> Iterator[BlockingChannel]:
    """A plain pika channel for declaring and inspecting test queues."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


@pytest.fixture
def amqp_queue(amqp_channel: BlockingChannel) -> Iterator[str]:
    """A fresh durable queue on the default exchange; deleted after the test."""
    name = f"signalbus-test-{uuid.uuid4().hex}"
    amqp_channel.queue_declare(name, durable=True)
    yield name
    amqp_channel.queue_delete(name)


@pytest.fixture
def freezable_proxy(amqp_url: str) -> Iterator[FreezableProxy]:
    """A :class:`FreezableProxy` in front of the test broker."""
    parts = urlsplit(amqp_url)
    proxy = FreezableProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    try:
        yield proxy
    finally:
        proxy.close()
