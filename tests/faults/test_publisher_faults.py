"""Faults of signalbus.rabbitmq: closed ports, silent servers, stalled and dropped connections."""

from __future__ import annotations

import logging
import socket
import time

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from signalbus.rabbitmq import ConfirmTimeout, ConnectionFailed, Message, Publisher
from tests.proxies import FreezableProxy
from tests.publisher_checks import SECRET_IN_URL, assert_secret_hidden, drain
from tests.rabbitmq_node import RabbitNode, free_ports


def test_closed_port_raises_connection_failed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    closed_port = free_ports(1)[0]  # nobody listens on it
    url = f"amqp://guest:{SECRET_IN_URL}@127.0.0.1:{closed_port}/%2F"
    publisher = Publisher(url, timeout=10)
    message = Message(b"x", routing_key="q")
    with pytest.raises(ConnectionFailed) as caught:
        publisher.publish_messages([message])
    assert caught.value.failed == (message,)
    assert "***" in str(caught.value)
    assert "refused" in str(caught.value).lower()
    assert_secret_hidden(caught.value, caplog)
    assert SECRET_IN_URL not in repr(publisher)


def test_silent_server_times_out_connecting() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:  # accepts, never answers
        url = f"amqp://guest:{SECRET_IN_URL}@127.0.0.1:{server.getsockname()[1]}/%2F"
        started = time.monotonic()
        with pytest.raises(ConnectionFailed) as caught:
            Publisher(url, timeout=0.5).publish_messages([Message(b"x")])
    assert time.monotonic() - started < 5
    assert SECRET_IN_URL not in repr(caught.value)


def test_silent_broker_raises_confirm_timeout_then_recovers(
    amqp_url: str,
    freezable_proxy: FreezableProxy,
    amqp_channel: BlockingChannel,
    amqp_queue: str,
) -> None:
    publisher = Publisher(freezable_proxy.url(amqp_url), timeout=1)
    try:
        publisher.publish_messages([Message(b"warm-up", routing_key=amqp_queue)])
        freezable_proxy.freeze()
        messages = [Message(b"m%d" % i, routing_key=amqp_queue) for i in range(20)]
        started = time.monotonic()
        with pytest.raises(ConfirmTimeout) as caught:
            publisher.publish_messages(messages)
        assert 1 <= time.monotonic() - started < 3
        assert caught.value.failed == tuple(messages)
        freezable_proxy.thaw()
        publisher.publish_messages([Message(b"after", routing_key=amqp_queue)])
    finally:
        publisher.close()
    bodies = [body for _, body in drain(amqp_channel, amqp_queue, 22)]
    assert bodies[0] == b"warm-up"
    assert bodies[-1] == b"after"


def test_dead_connection_found_while_publishing_is_replaced(
    amqp_url: str,
    freezable_proxy: FreezableProxy,
    amqp_channel: BlockingChannel,
    amqp_queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publisher = Publisher(freezable_proxy.url(amqp_url), timeout=10)
    try:
        publisher.publish_messages([Message(b"before", routing_key=amqp_queue)])
        freezable_proxy.drop_connections()
        # Pretend the idle check missed it, so the loss shows only while publishing.
        monkeypatch.setattr("signalbus.rabbitmq.link.Link.is_usable", lambda _self, fresh=0.0: True)
        publisher.publish_messages([Message(b"after", routing_key=amqp_queue)])
    finally:
        publisher.close()
    assert [body for _, body in drain(amqp_channel, amqp_queue, 2)] == [b"before", b"after"]


def test_connection_closed_by_broker_reconnects(
    rabbit_node: RabbitNode, rabbit_vhost_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    vhost = pika.URLParameters(rabbit_vhost_url).virtual_host
    admin = pika.BlockingConnection(pika.URLParameters(rabbit_vhost_url))
    channel = admin.channel()
    channel.queue_declare("q", durable=True)
    admin.close()
    publisher = Publisher(rabbit_vhost_url, timeout=10)
    try:
        publisher.publish_messages([Message(b"before", routing_key="q")])
        rabbit_node.ctl("close_all_connections", "--vhost", vhost, "signalbus test")
        publisher.publish_messages([Message(b"after", routing_key="q")])
    finally:
        publisher.close()
    admin = pika.BlockingConnection(pika.URLParameters(rabbit_vhost_url))
    try:
        got = drain(admin.channel(), "q", 2)
    finally:
        admin.close()
    assert [body for _, body in got] == [b"before", b"after"]
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("signalbus")]
    assert any("CONNECTION_FORCED" in message for message in ours)  # not only in pika's logs
