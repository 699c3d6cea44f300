"""Publishing the app's signals: one JSON message per row, to a RabbitMQ topic exchange.

Without ``SIGNALBUS_RABBITMQ_URL`` the messages are printed on standard
output instead, so that the app runs without a broker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import NoAppException

from signalbus.bus import table_name
from signalbus.rabbitmq import CONFIG_URL_KEY, Message, MessageProperties, publisher_from_config

__all__ = [
    "DEFAULT_EXCHANGE",
    "EXCHANGE_KEY",
    "PUBLISHER_KEY",
    "blocked",
    "build_message",
    "build_messages",
    "init_publisher",
    "publish",
    "release",
]

#: Config key of the (topic) exchange the messages go to; it must exist on the broker.
EXCHANGE_KEY = "SIGNALBUS_EXCHANGE"
DEFAULT_EXCHANGE = "signalbus"

#: Key of the app's :class:`~signalbus.rabbitmq.Publisher` in ``app.extensions``.
PUBLISHER_KEY = "refapp.publisher"


def init_publisher(app: Flask) -> None:
    """Create the app's publisher when a broker URL is configured."""
    if app.config.get(CONFIG_URL_KEY):
        try:
            app.extensions[PUBLISHER_KEY] = publisher_from_config(app.config)
        except ValueError as error:  # its message hides the password
            raise NoAppException(str(error)) from None


def blocked() -> bool:
    """Whether the broker blocks publishing (a resource alarm); never without a broker."""
    publisher = current_app.extensions.get(PUBLISHER_KEY)
    return publisher is not None and bool(publisher.blocked())


def release() -> None:
    """Close the calling thread's broker connection, if any (an idle listener worker)."""
    publisher = current_app.extensions.get(PUBLISHER_KEY)
    if publisher is not None:
        publisher.close()


def publish(model: type, rows: Sequence[Any]) -> None:
    """Publish one message per row of signal *model*, returning once all are confirmed.

    Raises (and the rows stay, to be sent again) if the broker did not take
    every message. Without a broker URL the messages are printed instead.
    """
    messages = build_messages(model, rows)
    publisher = current_app.extensions.get(PUBLISHER_KEY)
    if publisher is None:
        for message in messages:
            click.echo(f"{message.routing_key} {message.body.decode()}")
        return
    publisher.publish_messages(messages)


def build_message(model: Any, row: Any) -> Message:
    """Return the message of one signal row (see :func:`build_messages`)."""
    [message] = build_messages(model, [row])
    return message


def build_messages(model: Any, rows: Sequence[Any]) -> list[Message]:
    """Return the messages of signal rows of *model*, one per row, in order.

    The body is the row's ``payload`` (JSON text); the routing key the model's
    ``routing_key``; the message id, stable across redeliveries,
    ``"<table>:<primary key>"``. What all rows share is looked up once.
    """
    exchange = current_app.config.get(EXCHANGE_KEY, DEFAULT_EXCHANGE)
    routing_key = model.routing_key
    prefix = f"{table_name(model.__table__)}:"
    return [
        Message(
            body=row.payload.encode(),
            exchange=exchange,
            routing_key=routing_key,
            properties=MessageProperties(
                content_type="application/json",
                message_id=f"{prefix}{row.id}",
            ),
        )
        for row in rows
    ]
