"""pytest fixtures for tests against a real RabbitMQ broker.

Load them with ``pytest_plugins = ["tests.rabbitmq_fixtures"]`` in ``tests/conftest.py``.
The broker URL is ``$SIGNALBUS_TEST_RABBITMQ_URL``, by default
``amqp://guest:guest@127.0.0.1:5672/%2F``. If the broker does not answer, every test that
needs it fails (it is not skipped) with instructions to start it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from signalbus.rabbitmq import redact_url
from tests.proxies import FreezableProxy

AMQP_URL_ENV = "SIGNALBUS_TEST_RABBITMQ_URL"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def with_vhost(url: str, vhost: str) -> str:
    """Return ``url`` pointing at ``vhost`` instead of its own virtual host."""
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(vhost, safe="")))


def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl`` (which must be on PATH, run as root or the rabbitmq user)."""
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl is not on PATH; the test needs it to control the broker")
    result = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"rabbitmqctl {' '.join(args)} failed: {result.stderr or result.stdout}")
    return result.stdout


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
def amqp_vhost_url(amqp_url: str) -> Iterator[str]:
    """URL of a fresh virtual host (for tests that close all of its connections)."""
    vhost = f"signalbus-test-{uuid.uuid4().hex[:12]}"
    user = urlsplit(amqp_url).username or "guest"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield with_vhost(amqp_url, vhost)
    finally:
        rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def freezable_proxy(amqp_url: str) -> Iterator[FreezableProxy]:
    """A :class:`FreezableProxy` in front of the test broker."""
    parts = urlsplit(amqp_url)
    proxy = FreezableProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    try:
        yield proxy
    finally:
        proxy.close()
