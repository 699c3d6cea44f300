"""pytest fixtures for tests against a real RabbitMQ broker.

Load them with ``pytest_plugins = ["tests.rabbitmq_fixtures"]`` in ``tests/conftest.py``.
The broker URL is ``$SIGNALBUS_TEST_RABBITMQ_URL``, by default
``amqp://guest:guest@127.0.0.1:5672/%2F``. If the broker does not answer, every test that
needs it fails (it is not skipped) with instructions to start it.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from signalbus.rabbitmq import redact_url

AMQP_URL_ENV = "SIGNALBUS_TEST_RABBITMQ_URL"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.05)


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


class FreezableProxy:
    """A TCP proxy to the broker whose broker-to-client direction can be frozen.

    While frozen, data from the broker is held back, so the client sees a connection
    that is alive but silent (no confirms) - the way a stalled network looks.
    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._thawed = threading.Event()
        self._thawed.set()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = [self._listener]
        self._spawn(self._accept_loop)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            if not select.select([self._listener], [], [], 0.1)[0]:
                continue
            client, _ = self._listener.accept()
            upstream = socket.create_connection(self._target)
            self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream, None)
            self._spawn(self._pump, upstream, client, self._thawed)

    def freeze(self) -> None:
        """Hold back everything the broker sends from now on."""
        self._thawed.clear()

    def thaw(self) -> None:
        """Let the broker's data through again."""
        self._thawed.set()

    def drop_connections(self) -> None:
        """Cut every proxied connection, as a broker restart would."""
        for sock in self._sockets[1:]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def url(self, broker_url: str) -> str:
        """Return ``broker_url`` leading through this proxy."""
        parts = urlsplit(broker_url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def _pump(self, src: socket.socket, dst: socket.socket, gate: threading.Event | None) -> None:
        try:
            while not self._stop.is_set():
                if gate is not None and not gate.wait(0.1):
                    continue
                if not select.select([src], [], [], 0.1)[0]:
                    continue
                data = src.recv(65536)
                if not data:
                    break
                while gate is not None and not gate.wait(0.1):  # frozen: hold the data back
                    if self._stop.is_set():
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def freezable_proxy(amqp_url: str) -> Iterator[FreezableProxy]:
    """A :class:`FreezableProxy` in front of the test broker."""
    parts = urlsplit(amqp_url)
    proxy = FreezableProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    try:
        yield proxy
    finally:
        proxy.close()
