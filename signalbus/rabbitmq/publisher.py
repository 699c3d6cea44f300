"""The :class:`Publisher`: bursts of messages, confirmed, one connection per thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pika

from .. import config
from ..config import check_seconds
from ..errors import ConfigurationError
from ..redaction import Redactor, redact_url
from .errors import (
    ChannelClosed,
    ConfirmTimeout,
    ConnectionFailed,
    MessageNacked,
    MessageReturned,
    PublishError,
)
from .link import Link
from .messages import Message

__all__ = ["CONFIG_TIMEOUT_KEY", "CONFIG_URL_KEY", "Publisher", "publisher_from_config"]

logger = logging.getLogger(__name__)

CONFIG_URL_KEY = config.RABBITMQ_URL
"""Flask config key holding the broker URL (``amqp://`` or ``amqps://``)."""

CONFIG_TIMEOUT_KEY = config.RABBITMQ_TIMEOUT
"""Optional Flask config key: seconds a publish call may take (default 30)."""

_DEFAULT_TIMEOUT: float = config.DEFAULT_CONFIG[config.RABBITMQ_TIMEOUT]

_RESPONSIVE_BROKER_ERRORS = (ChannelClosed, MessageNacked, MessageReturned)
"""Errors after which the connection still works, so it is worth closing gracefully."""

#: Seconds for which a kept connection found usable (by :meth:`Publisher.blocked`
#: right before a burst's DELETE) needs no new look before publishing. Should it
#: have died meanwhile, publishing fails at once and goes again on a new one.
_FRESH = 0.05


class Publisher:
    """Publishes bursts of messages to one RabbitMQ broker with publisher confirms.

    :param url: ``amqp://user:password@host:port/vhost`` or ``amqps://...`` (TLS with
        the system's trusted CAs); query parameters such as ``heartbeat`` or
        ``connection_attempts`` are those of :class:`pika.URLParameters`. To read it
        from a Flask config, use :func:`publisher_from_config`.
    :param timeout: seconds a :meth:`publish_messages` call may take, connecting
        included, before it raises :class:`ConfirmTimeout` or :class:`ConnectionFailed`.
    :raises TypeError: ``url`` is not a ``str`` (e.g. a Flask app or its config).
    :raises ~signalbus.errors.ConfigurationError: (a ``ValueError``) ``url`` or
        ``timeout`` is invalid; the message shows the URL redacted.

    Connects lazily, on the first :meth:`publish_messages` call. Safe to share between
    threads: each thread uses its own connection.
    """

    def __init__(self, url: str, *, timeout: float = _DEFAULT_TIMEOUT) -> None:
        if not isinstance(url, str):
            raise TypeError(
                f"Publisher() takes the broker URL, not a {type(url).__name__}; "
                f"to read it from the app's config, use publisher_from_config(app.config)"
            )
        self.timeout = check_seconds("timeout", timeout)
        self._name = redact_url(url)
        self._redact = Redactor.for_urls(url)
        self._parameters = _parse_url(url, self._redact)
        self._local = threading.local()

    @property
    def url(self) -> str:
        """The broker URL with its password redacted."""
        return self._name

    def __repr__(self) -> str:
        return f"<Publisher url={self._name!r} timeout={self.timeout!r}>"

    def publish_messages(self, messages: Sequence[Message]) -> None:
        """Publish ``messages`` in order and return once the broker confirmed them all.

        :raises ConnectionFailed: cannot connect, or the connection was lost.
        :raises ChannelClosed: the broker closed the channel (e.g. missing exchange).
        :raises MessageNacked: the broker nacked at least one message.
        :raises MessageReturned: at least one mandatory message was unroutable.
        :raises ConfirmTimeout: not every message was confirmed within ``timeout``.

        On any error the thread's connection is closed; the next call reconnects. If a
        connection kept from an earlier call turns out to be dead (e.g. the broker
        restarted), the burst is published once more on a new connection within the same
        ``timeout``; some of its messages may then be delivered twice.
        """
        if not messages:
            return
        deadline = time.monotonic() + self.timeout
        for attempt in (1, 2):
            link, reused = self._get_link(deadline, messages)
            try:
                link.publish(messages, deadline)
                return
            except BaseException as exc:
                if isinstance(exc, ConfirmTimeout) and link.blocked:
                    # Kept: only a connection that published hears when the alarm is over.
                    raise
                self._discard(graceful=isinstance(exc, _RESPONSIVE_BROKER_ERRORS))
                if not (attempt == 1 and reused and isinstance(exc, ConnectionFailed)):
                    raise  # the caller says what it means to it
                logger.info("%s; publishing again on a new connection", exc)

    def blocked(self) -> bool:
        """Tell whether the broker blocks the calling thread's connection (a resource alarm).

        While it does, a burst would wait for its confirmations until the
        timeout: check before publishing (a signal model's ``signalbus_blocked``)
        so that no transaction is opened meanwhile. Processes the connection's
        pending input without waiting; false without a connection.
        """
        link: Link | None = getattr(self._local, "link", None)
        return link is not None and link.is_usable() and link.blocked

    def close(self) -> None:
        """Close the calling thread's connection, if any. The next call reconnects."""
        self._discard(graceful=True)

    def _get_link(self, deadline: float, messages: Sequence[Message]) -> tuple[Link, bool]:
        """Return the thread's link, opening one if needed, and whether it was reused."""
        link: Link | None = getattr(self._local, "link", None)
        if link is not None:
            if link.is_usable(fresh=_FRESH):
                return link, True
            if link.error is not None:  # e.g. closed by the broker while idle
                logger.warning("%s; reconnecting", link.error)
            self._discard(graceful=False)
        link = Link(self._parameters, self._name, self._redact)
        self._local.link = link
        try:
            link.wait_open(deadline)
        except PublishError as exc:
            self._discard(graceful=False)
            exc.failed = tuple(messages)
            raise exc from None
        except BaseException:
            self._discard(graceful=False)
            raise
        return link, False

    def _discard(self, *, graceful: bool) -> None:
        link: Link | None = getattr(self._local, "link", None)
        self._local.link = None
        if link is not None:
            link.close(graceful=graceful)


def publisher_from_config(mapping: Mapping[str, Any]) -> Publisher:
    """Create a :class:`Publisher` from a Flask-style config mapping.

    Reads :data:`CONFIG_URL_KEY` (``SIGNALBUS_RABBITMQ_URL``, required) and
    :data:`CONFIG_TIMEOUT_KEY` (``SIGNALBUS_RABBITMQ_TIMEOUT``, optional, seconds).

    :raises ~signalbus.errors.MissingSettingError: (a ``KeyError``) the URL is not set.
    :raises ~signalbus.errors.ConfigurationError: (a ``ValueError``) the timeout is
        invalid (the message names the key), or the URL is (it shows the URL redacted).
    """
    settings = config.publisher_settings(mapping)
    return Publisher(settings.url, timeout=settings.timeout)


def _parse_url(url: str, redact: Redactor) -> pika.URLParameters:
    """Return pika's connection parameters for ``url`` without leaking its password."""
    scheme = url.partition(":")[0].lower()
    if scheme not in ("amqp", "amqps"):
        raise ConfigurationError(
            f"invalid RabbitMQ URL {redact_url(url)}: expected amqp:// or amqps://"
        )
    try:
        return pika.URLParameters(url)
    except Exception as exc:
        text = redact(f"{type(exc).__name__}: {exc}")
        raise ConfigurationError(f"invalid RabbitMQ URL {redact_url(url)}: {text}") from None
