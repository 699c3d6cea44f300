"""Tests of signalbus.rabbitmq against a real RabbitMQ broker (no mocks)."""

from __future__ import annotations

import logging
import threading
import uuid

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from signalbus.rabbitmq import (
    PERSISTENT,
    ChannelClosed,
    ConnectionFailed,
    Message,
    MessageNacked,
    MessageProperties,
    MessageReturned,
    Publisher,
    PublishError,
    Return,
)
from tests.publisher_checks import SECRET_IN_URL, assert_secret_hidden, drain, queue_length


@pytest.fixture
def publisher(amqp_url: str):
    publisher = Publisher(amqp_url, timeout=10)
    yield publisher
    publisher.close()


# -- publishing ----------------------------------------------------------------------------


def test_publish_confirms_and_delivers(
    publisher: Publisher, amqp_channel: BlockingChannel, amqp_queue: str
) -> None:
    messages = [
        Message(
            f"body {i}".encode(),
            routing_key=amqp_queue,
            properties=MessageProperties(
                content_type="application/json",
                headers={"n": i, "kind": "test"},
                message_id=f"id-{i}",
                type="test.message",
                app_id="signalbus-tests",
                timestamp=1_700_000_000,
            ),
        )
        for i in range(1500)
    ]
    publisher.publish_messages(messages)

    got = drain(amqp_channel, amqp_queue, len(messages))
    assert [body for _, body in got] == [m.body for m in messages]
    for i, (props, _) in enumerate(got):
        assert props.delivery_mode == PERSISTENT
        assert props.content_type == "application/json"
        assert props.message_id == f"id-{i}"
        assert props.headers == {"n": i, "kind": "test"}
        assert props.type == "test.message"
        assert props.app_id == "signalbus-tests"
        assert props.timestamp == 1_700_000_000


def test_publish_through_exchange_reuses_connection(
    publisher: Publisher, amqp_channel: BlockingChannel, amqp_queue: str
) -> None:
    exchange = f"signalbus-test-{uuid.uuid4().hex}"
    amqp_channel.exchange_declare(exchange, "direct", durable=True)
    amqp_channel.queue_bind(amqp_queue, exchange, "key")
    try:
        for burst in range(3):
            publisher.publish_messages(
                [Message(b"%d-%d" % (burst, i), exchange, "key") for i in range(10)]
            )
        got = drain(amqp_channel, amqp_queue, 30)
        assert [body for _, body in got] == [b"%d-%d" % (b, i) for b in range(3) for i in range(10)]
        assert got[0][0].delivery_mode == PERSISTENT
    finally:
        amqp_channel.exchange_delete(exchange)


def test_threads_publish_concurrently(
    publisher: Publisher, amqp_channel: BlockingChannel, amqp_queue: str
) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for burst in range(5):
                publisher.publish_messages(
                    [
                        Message(b"t%d-%d-%d" % (n, burst, i), routing_key=amqp_queue)
                        for i in range(50)
                    ]
                )
        except BaseException as exc:
            errors.append(exc)
        finally:
            publisher.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    got = drain(amqp_channel, amqp_queue, 4 * 5 * 50)
    assert sorted(body for _, body in got) == sorted(
        b"t%d-%d-%d" % (n, b, i) for n in range(4) for b in range(5) for i in range(50)
    )


# -- broker refusals -----------------------------------------------------------------------


def test_unroutable_mandatory_message_is_returned(
    publisher: Publisher, amqp_channel: BlockingChannel, amqp_queue: str
) -> None:
    nowhere = f"signalbus-missing-{uuid.uuid4().hex}"
    messages = [
        Message(b"first", routing_key=amqp_queue),
        Message(b"lost", routing_key=nowhere),
        Message(b"last", routing_key=amqp_queue),
    ]
    with pytest.raises(MessageReturned) as caught:
        publisher.publish_messages(messages)

    assert caught.value.failed == (messages[1],)
    assert caught.value.replies == ((312, "NO_ROUTE"),)
    assert caught.value.returns == (Return(312, "NO_ROUTE", "", nowhere),)
    reply = f"312 NO_ROUTE (exchange '', routing key '{nowhere}')"
    assert f"returned 1 of 3 messages as unroutable: {reply}" in str(caught.value)
    assert [body for _, body in drain(amqp_channel, amqp_queue, 2)] == [b"first", b"last"]
    publisher.publish_messages([Message(b"after", routing_key=amqp_queue)])
    assert [body for _, body in drain(amqp_channel, amqp_queue, 1)] == [b"after"]


def test_return_matching_no_message_fails_the_whole_burst(
    publisher: Publisher, amqp_queue: str
) -> None:
    nowhere = f"signalbus-missing-{uuid.uuid4().hex}"
    messages = [Message(b"kept", routing_key=amqp_queue), Message(b"lost", routing_key=nowhere)]
    # A body the broker sends back differently (pika would publish a str as UTF-8).
    object.__setattr__(messages[1], "body", "lost")
    with pytest.raises(MessageReturned) as caught:
        publisher.publish_messages(messages)
    assert caught.value.failed == tuple(messages)


def test_unroutable_optional_message_is_dropped(publisher: Publisher) -> None:
    nowhere = f"signalbus-missing-{uuid.uuid4().hex}"
    publisher.publish_messages([Message(b"dropped", routing_key=nowhere, mandatory=False)])


def test_nacked_messages_raise(publisher: Publisher, amqp_channel: BlockingChannel) -> None:
    queue = f"signalbus-test-{uuid.uuid4().hex}"
    amqp_channel.queue_declare(
        queue, durable=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    try:
        messages = [Message(b"m%d" % i, routing_key=queue) for i in range(3)]
        with pytest.raises(MessageNacked) as caught:
            publisher.publish_messages(messages)
        assert caught.value.failed == tuple(messages[1:])
        assert "nack" in str(caught.value)
        assert queue_length(amqp_channel, queue) == 1
        assert [body for _, body in drain(amqp_channel, queue, 1)] == [b"m0"]
        publisher.publish_messages([Message(b"fits", routing_key=queue)])
        assert queue_length(amqp_channel, queue) == 1
    finally:
        amqp_channel.queue_delete(queue)


def test_missing_exchange_closes_channel_then_recovers(
    publisher: Publisher, amqp_channel: BlockingChannel, amqp_queue: str
) -> None:
    messages = [
        Message(b"ok", routing_key=amqp_queue),
        Message(b"bad", exchange=f"signalbus-missing-{uuid.uuid4().hex}"),
    ]
    with pytest.raises(ChannelClosed) as caught:
        publisher.publish_messages(messages)
    assert isinstance(caught.value, PublishError)
    assert caught.value.reply_code == 404
    assert "NOT_FOUND" in str(caught.value)
    assert messages[1] in caught.value.failed

    publisher.publish_messages([Message(b"next", routing_key=amqp_queue)])
    bodies = [body for _, body in drain(amqp_channel, amqp_queue, 1)]
    bodies += [
        body for _, body in drain(amqp_channel, amqp_queue, queue_length(amqp_channel, amqp_queue))
    ]
    assert b"next" in bodies


# -- connection failures -------------------------------------------------------------------


def test_wrong_password_raises_connection_failed(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    netloc = pika.URLParameters(amqp_url)
    url = f"amqp://{netloc.credentials.username}:{SECRET_IN_URL}@{netloc.host}:{netloc.port}/%2F"
    with pytest.raises(ConnectionFailed) as caught:
        Publisher(url, timeout=10).publish_messages([Message(b"x")])
    assert "ACCESS_REFUSED" in str(caught.value)
    assert_secret_hidden(caught.value, caplog)
