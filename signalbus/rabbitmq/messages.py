"""The messages a :class:`~signalbus.rabbitmq.Publisher` publishes, and their AMQP properties."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pika

__all__ = ["PERSISTENT", "TRANSIENT", "Message", "MessageProperties"]

TRANSIENT = 1
"""``delivery_mode`` of a message the broker may keep in memory only."""

PERSISTENT = 2
"""``delivery_mode`` of a message a durable queue writes to disk (the default)."""


@dataclass(frozen=True)
class MessageProperties:
    """AMQP properties of a message (the ``basic`` content header).

    :param content_type: MIME type of the body, e.g. ``"application/json"``.
    :param content_encoding: encoding of the body, e.g. ``"gzip"``.
    :param headers: application headers; values must be AMQP-encodable (str, bytes,
        int, float, bool, None, decimal, datetime, list, dict).
    :param delivery_mode: :data:`PERSISTENT` (the default) or :data:`TRANSIENT`.
    :param message_id: application message identifier, e.g. for deduplication.
    :param correlation_id: application correlation identifier.
    :param timestamp: POSIX time in whole seconds.
    :param type: application message type name.
    :param app_id: name of the sending application.
    :param expiration: per-message TTL in milliseconds, as a string (AMQP's format).

    Instances are immutable, but ``headers`` is a plain dict: do not modify it after
    creating the properties.
    """

    content_type: str | None = None
    content_encoding: str | None = None
    headers: dict[str, Any] | None = None
    delivery_mode: int = PERSISTENT
    message_id: str | None = None
    correlation_id: str | None = None
    timestamp: int | None = None
    type: str | None = None
    app_id: str | None = None
    expiration: str | None = None

    def to_pika(self) -> pika.BasicProperties:
        """Return the equivalent :class:`pika.BasicProperties`."""
        return pika.BasicProperties(
            content_type=self.content_type,
            content_encoding=self.content_encoding,
            headers=self.headers,
            delivery_mode=self.delivery_mode,
            message_id=self.message_id,
            correlation_id=self.correlation_id,
            timestamp=self.timestamp,
            type=self.type,
            app_id=self.app_id,
            expiration=self.expiration,
        )


@dataclass(frozen=True)
class Message:
    """One message to publish.

    :param body: the payload.
    :param exchange: exchange name; ``""`` is the default exchange, which routes to the
        queue named by ``routing_key``.
    :param routing_key: routing key.
    :param properties: AMQP properties; persistent with nothing else set by default.
    :param mandatory: when true (the default) a message that no queue receives is
        returned by the broker and makes the publish call raise
        :class:`~signalbus.rabbitmq.MessageReturned`; when false such a message is
        silently dropped.
    """

    body: bytes
    exchange: str = ""
    routing_key: str = ""
    properties: MessageProperties = field(default_factory=MessageProperties)
    mandatory: bool = True

    def __post_init__(self) -> None:
        # A returned message is matched to its burst by its body, as the broker sends
        # it back: bytes. A str body would never match, and its return go unnoticed.
        if not isinstance(self.body, bytes):
            raise TypeError(f"Message.body must be bytes, not {type(self.body).__name__}")
