"""Publish messages to RabbitMQ and wait until the broker has confirmed every one.

This package is the only part of signalbus that imports :mod:`pika`.

A :class:`Publisher` sends a whole burst of :class:`Message` objects over one channel in
`publisher-confirm <https://www.rabbitmq.com/docs/confirms#publisher-confirms>`_ mode and
then waits for all the confirmations at once, so a burst costs one round trip rather than
one per message. :meth:`Publisher.publish_messages` returns only when the broker has
confirmed (``basic.ack``) every message of the burst and routed every mandatory one;
in any other case it raises a :class:`PublishError` subclass, and the messages it lists in
:attr:`PublishError.failed` may or may not have reached a queue. Messages can therefore be
delivered more than once, never lost: delete a signal row only after its message's
publish call returned.

Every thread gets its own connection and channel, opened on first use and reused by later
calls. After any error the thread's connection is closed and the next call opens a new
one. A kept connection that turns out to be dead (broker restart, idle timeout) is
replaced within the same call, publishing the burst once more.

The broker URL's password never appears in this package's log lines, exception messages
or reprs; see :func:`signalbus.redaction.redact_url`.

Example::

    publisher = Publisher("amqp://user:secret@rabbitmq:5672/%2F")
    # or, from SIGNALBUS_RABBITMQ_URL and SIGNALBUS_RABBITMQ_TIMEOUT:
    publisher = publisher_from_config(app.config)
    publisher.publish_messages([
        Message(b'{"id": 1}', exchange="events", routing_key="order.created",
                properties=MessageProperties(content_type="application/json",
                                             message_id="order-1")),
    ])

The modules: :mod:`~signalbus.rabbitmq.messages`, :mod:`~signalbus.rabbitmq.errors` and
:mod:`~signalbus.rabbitmq.publisher` hold what is imported from here;
:mod:`~signalbus.rabbitmq.link` drives one connection, :mod:`~signalbus.rabbitmq.confirms`
keeps the books of one burst's confirmations, and :mod:`~signalbus.rabbitmq._pika` fences
in the private pika API the connection relies on.
"""

from ..redaction import redact_url
from .errors import (
    ChannelClosed,
    ConfirmTimeout,
    ConnectionFailed,
    MessageNacked,
    MessageReturned,
    PublishError,
    Return,
)
from .messages import PERSISTENT, TRANSIENT, Message, MessageProperties
from .publisher import CONFIG_TIMEOUT_KEY, CONFIG_URL_KEY, Publisher, publisher_from_config

__all__ = [
    "CONFIG_TIMEOUT_KEY",
    "CONFIG_URL_KEY",
    "PERSISTENT",
    "TRANSIENT",
    "ChannelClosed",
    "ConfirmTimeout",
    "ConnectionFailed",
    "Message",
    "MessageNacked",
    "MessageProperties",
    "MessageReturned",
    "PublishError",
    "Publisher",
    "Return",
    "publisher_from_config",
    "redact_url",
]
