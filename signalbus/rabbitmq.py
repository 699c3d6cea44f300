"""Publish messages to RabbitMQ and wait until the broker has confirmed every one.

This is the only module of signalbus that imports :mod:`pika`.

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

The broker URL's password never appears in this module's log lines, exception messages or
reprs; see :func:`redact_url`.

Example::

    publisher = Publisher("amqp://user:secret@rabbitmq:5672/%2F")
    publisher.publish_messages([
        Message(b'{"id": 1}', exchange="events", routing_key="order.created",
                properties=MessageProperties(content_type="application/json",
                                             message_id="order-1")),
    ])
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions
from pika.adapters.select_connection import IOLoop, SelectConnection
from pika.spec import Basic

from . import config
from .config import check_seconds
from .redaction import redact_url

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
    "publisher_from_config",
    "redact_url",
]

logger = logging.getLogger(__name__)

CONFIG_URL_KEY = config.RABBITMQ_URL
"""Flask config key holding the broker URL (``amqp://`` or ``amqps://``)."""

CONFIG_TIMEOUT_KEY = config.RABBITMQ_TIMEOUT
"""Optional Flask config key: seconds a publish call may take (default 30)."""

TRANSIENT = 1
"""``delivery_mode`` of a message the broker may keep in memory only."""

PERSISTENT = 2
"""``delivery_mode`` of a message a durable queue writes to disk (the default)."""

_DEFAULT_TIMEOUT: float = config.DEFAULT_CONFIG[config.RABBITMQ_TIMEOUT]

_CLOSE_TIMEOUT = 5.0
"""Longest wait, in seconds, for a graceful close of a connection being discarded."""

_BATCH_BYTES = 1 << 20
"""Size at which gathered outgoing frames are handed to the socket transport."""


# ---------------------------------------------------------------------------------------
# Messages


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
        :class:`MessageReturned`; when false such a message is silently dropped.
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


# ---------------------------------------------------------------------------------------
# Errors


class PublishError(Exception):
    """A publish call did not get every message confirmed.

    :ivar failed: the messages of the call that are not known to be safely delivered:
        nacked, returned, or never confirmed. Every other message of the call was
        confirmed by the broker. Messages listed here may still have reached a queue,
        so publish them again rather than assume they were lost or delivered.
    """

    def __init__(self, text: str, failed: Sequence[Message] = ()) -> None:
        super().__init__(text)
        self.failed: tuple[Message, ...] = tuple(failed)


class ConnectionFailed(PublishError):
    """The connection could not be opened, or it was lost during the call."""


class ChannelClosed(PublishError):
    """The broker closed the channel, e.g. ``404 NOT_FOUND`` for a missing exchange.

    :ivar reply_code: the AMQP reply code (``404``, ``403``, ``406`` ...).
    :ivar reply_text: the broker's explanation.
    """

    def __init__(
        self, text: str, failed: Sequence[Message] = (), reply_code: int = 0, reply_text: str = ""
    ) -> None:
        super().__init__(text, failed)
        self.reply_code = reply_code
        self.reply_text = reply_text


class MessageNacked(PublishError):
    """The broker refused (``basic.nack``) at least one message, e.g. a full queue with
    ``x-overflow: reject-publish``. Takes precedence over :class:`MessageReturned`."""


class MessageReturned(PublishError):
    """At least one mandatory message could not be routed to any queue.

    :ivar replies: ``(reply_code, reply_text)`` for each returned message, in order,
        e.g. ``(312, "NO_ROUTE")``.
    """

    def __init__(
        self,
        text: str,
        failed: Sequence[Message] = (),
        replies: Sequence[tuple[int, str]] = (),
    ) -> None:
        super().__init__(text, failed)
        self.replies: tuple[tuple[int, str], ...] = tuple(replies)


class ConfirmTimeout(PublishError):
    """The broker did not confirm every message before the publisher's timeout."""


_RESPONSIVE_BROKER_ERRORS = (ChannelClosed, MessageNacked, MessageReturned)
"""Errors after which the connection still works, so it is worth closing gracefully."""


# ---------------------------------------------------------------------------------------
# URLs and secrets


def _url_secrets(url: str) -> tuple[str, ...]:
    """Return the password of ``url`` as written and decoded, longest first."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return ()
    if not password:
        return ()
    return tuple(sorted({password, unquote(password)}, key=len, reverse=True))


def _scrub(text: str, secrets: Sequence[str]) -> str:
    """Replace each of ``secrets`` in ``text`` by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _root_cause(error: BaseException) -> str:
    """Describe the innermost cause of a pika connection error in one line.

    pika wraps e.g. ``ConnectionRefusedError`` in connector and workflow errors whose own
    text is empty or verbose.
    """
    for _ in range(5):
        inner = getattr(error, "exception", None)
        if inner is None and getattr(error, "exceptions", None):
            inner = error.exceptions[-1]  # type: ignore[attr-defined]
        if inner is None and len(error.args) == 1 and isinstance(error.args[0], BaseException):
            inner = error.args[0]
        if not isinstance(inner, BaseException):
            break
        error = inner
    return f"{type(error).__name__}: {str(error) or repr(error)}"


def _parse_url(url: str, secrets: Sequence[str]) -> pika.URLParameters:
    """Return pika's connection parameters for ``url`` without leaking its password."""
    scheme = url.partition(":")[0].lower()
    if scheme not in ("amqp", "amqps"):
        raise ValueError(f"invalid RabbitMQ URL {redact_url(url)}: expected amqp:// or amqps://")
    try:
        return pika.URLParameters(url)
    except Exception as exc:
        text = _scrub(f"{type(exc).__name__}: {exc}", secrets)
        raise ValueError(f"invalid RabbitMQ URL {redact_url(url)}: {text}") from None


# ---------------------------------------------------------------------------------------
# One connection and channel, owned by one thread


class _BatchingConnection(SelectConnection):
    """A :class:`SelectConnection` that can gather outgoing frames into few large writes.

    pika hands every frame (three per message: method, header, body) to its transport,
    which makes one ``send()`` system call per frame. Between :meth:`start_batch` and
    :meth:`flush_batch` frames are joined instead, so a burst costs a handful of system
    calls. The bytes on the wire, and their order, are unchanged.
    """

    _batch: list[bytes] | None = None
    _batch_size = 0

    def _adapter_emit_data(self, data: bytes) -> None:
        batch = self._batch
        if batch is None:
            super()._adapter_emit_data(data)
            return
        batch.append(data)
        self._batch_size += len(data)
        if self._batch_size >= _BATCH_BYTES:
            self._emit_batch()
            self._batch = []

    def abort(self) -> None:
        """Drop the TCP connection without the AMQP closing handshake.

        Completes asynchronously: run the I/O loop until :attr:`is_closed`.
        """
        if not self.is_closed:
            self._terminate_stream(pika.exceptions.ConnectionClosedByClient(200, "aborted"))

    def start_batch(self) -> None:
        """Gather frames until :meth:`flush_batch`."""
        self._batch, self._batch_size = [], 0

    def flush_batch(self) -> None:
        """Hand the gathered frames to the transport and stop gathering."""
        self._emit_batch()
        self._batch = None

    def _emit_batch(self) -> None:
        batch, self._batch_size = self._batch, 0
        if batch and self._transport is not None:
            super()._adapter_emit_data(b"".join(batch))


class _Link:
    """A connection with one confirm-mode channel, driven by a private I/O loop.

    All its methods must be called from the thread that created it.
    """

    def __init__(self, parameters: pika.URLParameters, name: str, secrets: Sequence[str]):
        self.pid = os.getpid()
        self._name = name
        self._secrets = secrets
        self._ioloop = IOLoop()
        self._ioloop.activate_poller()
        self._connection: _BatchingConnection | None = None
        self._channel: Any = None
        self._ready = False
        self._blocked = False
        self._timed_out = False
        self._closing = False
        self.error: PublishError | None = None
        self._next_tag = 1
        self._reset_burst(())
        try:
            self._connection = _BatchingConnection(
                parameters,
                on_open_callback=self._on_connection_open,
                on_open_error_callback=self._on_connection_open_error,
                on_close_callback=self._on_connection_closed,
                custom_ioloop=self._ioloop,
            )
        except BaseException:
            self._ioloop.close()
            raise
        self._connection.add_on_connection_blocked_callback(self._on_blocked)
        self._connection.add_on_connection_unblocked_callback(self._on_unblocked)

    # -- opening ------------------------------------------------------------------------

    def wait_open(self, deadline: float) -> None:
        """Run the I/O loop until the channel is ready for publishing."""
        self._run_until(lambda: self._ready, deadline)
        if not self._ready:
            raise ConnectionFailed(f"timed out connecting to RabbitMQ at {self._name}")

    def _on_connection_open(self, connection: SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_connection_open_error(self, _connection: Any, error: BaseException) -> None:
        self._fail(
            ConnectionFailed(f"cannot connect to RabbitMQ at {self._name}: {self._describe(error)}")
        )

    def _on_channel_open(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_select_ok)

    def _on_select_ok(self, _frame: Any) -> None:
        self._ready = True
        logger.info("connected to RabbitMQ at %s", self._name)

    # -- failures -----------------------------------------------------------------------

    def _describe(self, error: BaseException) -> str:
        return _scrub(_root_cause(error), self._secrets)

    def _fail(self, error: PublishError) -> None:
        if self.error is None and not self._closing:
            self.error = error

    def _on_connection_closed(self, _connection: Any, reason: BaseException) -> None:
        self._fail(
            ConnectionFailed(
                f"connection to RabbitMQ at {self._name} lost: {self._describe(reason)}"
            )
        )

    def _on_channel_closed(self, _channel: Any, reason: BaseException) -> None:
        if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            text = _scrub(reason.reply_text, self._secrets)
            self._fail(
                ChannelClosed(
                    f"RabbitMQ at {self._name} closed the channel: {reason.reply_code} {text}",
                    reply_code=reason.reply_code,
                    reply_text=text,
                )
            )
        elif not isinstance(reason, pika.exceptions.ChannelClosedByClient):
            self._fail(
                ConnectionFailed(
                    f"channel to RabbitMQ at {self._name} lost: {self._describe(reason)}"
                )
            )

    def _on_blocked(self, _connection: Any, _frame: Any) -> None:
        self._blocked = True
        logger.warning("RabbitMQ at %s blocks publishing (resource alarm)", self._name)

    def _on_unblocked(self, _connection: Any, _frame: Any) -> None:
        self._blocked = False

    # -- I/O loop -----------------------------------------------------------------------

    def _on_deadline(self) -> None:
        self._timed_out = True

    def _run_until(self, done: Callable[[], bool], deadline: float) -> None:
        """Process I/O until ``done()``, an error, or ``deadline`` (monotonic seconds).

        Raises the error recorded by a callback, if any.
        """
        self._timed_out = False
        ioloop = self._ioloop
        timer = ioloop.call_later(max(0.0, deadline - time.monotonic()), self._on_deadline)
        try:
            while not (done() or self.error or self._timed_out):
                ioloop.poll()
                ioloop.process_timeouts()
        finally:
            ioloop.remove_timeout(timer)
        if self.error is not None:
            raise self.error

    def is_usable(self) -> bool:
        """Process pending input without blocking; tell if the link can still publish.

        Reveals a connection the broker closed while the link sat idle.
        """
        if self.error is not None or not self._ready or self.pid != os.getpid():
            return False
        for _ in range(2):
            self._ioloop.call_later(0, _noop)
            self._ioloop.poll()
            self._ioloop.process_timeouts()
        connection, channel = self._connection, self._channel
        return (
            self.error is None
            and connection is not None
            and connection.is_open
            and channel is not None
            and channel.is_open
        )

    # -- publishing ---------------------------------------------------------------------

    def _reset_burst(self, messages: Sequence[Message]) -> None:
        self._messages = messages
        self._first_tag = self._next_tag
        self._low_tag = self._next_tag
        self._unconfirmed: set[int] = set(range(self._next_tag, self._next_tag + len(messages)))
        self._nacked: list[int] = []
        self._returned: list[int] = []
        self._replies: list[tuple[int, str]] = []
        self._return_cursor = 0

    def publish(self, messages: Sequence[Message], deadline: float) -> None:
        """Publish ``messages`` and wait for all their confirmations.

        :raises PublishError: see :meth:`Publisher.publish_messages`.
        """
        self._reset_burst(messages)
        connection, publish = self._connection, self._channel.basic_publish
        last_props: MessageProperties | None = None
        pika_props: pika.BasicProperties | None = None
        connection.start_batch()
        try:
            for message in messages:
                props = message.properties
                if props is not last_props:
                    last_props, pika_props = props, props.to_pika()
                publish(
                    message.exchange,
                    message.routing_key,
                    message.body,
                    pika_props,
                    message.mandatory,
                )
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._fail(
                ConnectionFailed(
                    f"publishing to RabbitMQ at {self._name} failed: {self._describe(exc)}"
                )
            )
        finally:
            connection.flush_batch()
            self._next_tag += len(messages)
        try:
            self._run_until(lambda: not self._unconfirmed, deadline)
        except PublishError as error:
            error.failed = self._unconfirmed_messages()
            raise
        if self._unconfirmed:
            raise self._timeout_error()
        self._raise_rejections()

    def _timeout_error(self) -> ConfirmTimeout:
        failed = self._unconfirmed_messages()
        blocked = " (the broker blocks publishing: resource alarm)" if self._blocked else ""
        return ConfirmTimeout(
            f"RabbitMQ at {self._name} did not confirm {len(failed)} of "
            f"{len(self._messages)} messages in time{blocked}",
            failed,
        )

    def _raise_rejections(self) -> None:
        if not (self._nacked or self._replies):
            return
        if len(self._returned) < len(self._replies):
            failed = list(self._messages)  # a return matched no message: fail them all
        else:
            failed_tags = sorted(set(self._nacked) | set(self._returned))
            failed = [self._messages[tag - self._first_tag] for tag in failed_tags]
        if self._nacked:
            raise MessageNacked(
                f"RabbitMQ at {self._name} rejected (nacked) "
                f"{len(self._nacked)} of {len(self._messages)} messages",
                failed,
            )
        replies = ", ".join(f"{code} {text}" for code, text in self._replies[:3])
        raise MessageReturned(
            f"RabbitMQ at {self._name} returned {len(self._replies)} of "
            f"{len(self._messages)} messages as unroutable: {replies}",
            failed,
            self._replies,
        )

    def _unconfirmed_messages(self) -> tuple[Message, ...]:
        first, messages = self._first_tag, self._messages
        tags = sorted(self._unconfirmed | set(self._nacked) | set(self._returned))
        return tuple(messages[tag - first] for tag in tags)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag, unconfirmed = method.delivery_tag, self._unconfirmed
        if method.multiple:
            tags = [t for t in range(self._low_tag, tag + 1) if t in unconfirmed]
            unconfirmed.difference_update(tags)
        elif tag in unconfirmed:
            unconfirmed.discard(tag)
            tags = [tag]
        else:
            return
        if isinstance(method, Basic.Nack):
            self._nacked.extend(tags)
        low, end = self._low_tag, self._next_tag
        while low < end and low not in unconfirmed:
            low += 1
        self._low_tag = low

    def _on_return(self, _channel: Any, method: Any, _properties: Any, body: bytes) -> None:
        """Record a returned message; returns arrive in publishing order, before the ack."""
        messages = self._messages
        for index in range(self._return_cursor, len(messages)):
            message = messages[index]
            if (
                message.body == body
                and message.routing_key == method.routing_key
                and message.exchange == method.exchange
            ):
                self._returned.append(self._first_tag + index)
                self._return_cursor = index + 1
                break
        self._replies.append((method.reply_code, method.reply_text))

    # -- closing ------------------------------------------------------------------------

    def close(self, *, graceful: bool) -> None:
        """Close the connection and release the I/O loop.

        :param graceful: do the AMQP closing handshake (waiting a few seconds at most)
            rather than drop the TCP connection at once; only worth it when the broker
            is responsive.
        """
        connection = self._connection
        if self.pid != os.getpid():  # inherited through fork(): the parent owns the socket
            return
        self._closing = True
        try:
            if connection is not None and not connection.is_closed:
                if graceful and connection.is_open:
                    connection.close()
                    self._wait_closed(_CLOSE_TIMEOUT)
                if not connection.is_closed:
                    connection.abort()
                    self._wait_closed(1.0)
        except Exception as exc:  # discarding anyway; nothing useful to do with it
            logger.debug("error closing connection to %s: %s", self._name, self._describe(exc))
        finally:
            self._ioloop.close()

    def _wait_closed(self, seconds: float) -> None:
        connection = self._connection
        assert connection is not None
        self.error = None
        self._run_until(lambda: connection.is_closed, time.monotonic() + seconds)


def _noop() -> None:
    """Timer callback that only makes the I/O loop return."""


# ---------------------------------------------------------------------------------------
# Public publisher


class Publisher:
    """Publishes bursts of messages to one RabbitMQ broker with publisher confirms.

    :param url: ``amqp://user:password@host:port/vhost`` or ``amqps://...`` (TLS with
        the system's trusted CAs); query parameters such as ``heartbeat`` or
        ``connection_attempts`` are those of :class:`pika.URLParameters`.
    :param timeout: seconds a :meth:`publish_messages` call may take, connecting
        included, before it raises :class:`ConfirmTimeout` or :class:`ConnectionFailed`.

    Safe to share between threads: each thread uses its own connection.
    """

    def __init__(self, url: str, *, timeout: float = _DEFAULT_TIMEOUT) -> None:
        timeout = check_seconds("timeout", timeout)
        self._secrets = _url_secrets(url)
        self._name = redact_url(url)
        self._parameters = _parse_url(url, self._secrets)
        self.timeout = timeout
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
                self._discard(graceful=isinstance(exc, _RESPONSIVE_BROKER_ERRORS))
                if not (attempt == 1 and reused and isinstance(exc, ConnectionFailed)):
                    if isinstance(exc, PublishError):
                        logger.warning("%s", exc)
                    raise
                logger.info("%s; publishing again on a new connection", exc)

    def close(self) -> None:
        """Close the calling thread's connection, if any. The next call reconnects."""
        self._discard(graceful=True)

    def _get_link(self, deadline: float, messages: Sequence[Message]) -> tuple[_Link, bool]:
        """Return the thread's link, opening one if needed, and whether it was reused."""
        link: _Link | None = getattr(self._local, "link", None)
        if link is not None:
            if link.is_usable():
                return link, True
            if link.error is not None:  # e.g. closed by the broker while idle
                logger.warning("%s; reconnecting", link.error)
            self._discard(graceful=False)
        link = _Link(self._parameters, self._name, self._secrets)
        self._local.link = link
        try:
            link.wait_open(deadline)
        except PublishError as exc:
            self._discard(graceful=False)
            exc.failed = tuple(messages)
            logger.warning("%s", exc)
            raise exc from None
        except BaseException:
            self._discard(graceful=False)
            raise
        return link, False

    def _discard(self, *, graceful: bool) -> None:
        link: _Link | None = getattr(self._local, "link", None)
        self._local.link = None
        if link is not None:
            link.close(graceful=graceful)


def publisher_from_config(mapping: Mapping[str, Any]) -> Publisher:
    """Create a :class:`Publisher` from a Flask-style config mapping.

    Reads :data:`CONFIG_URL_KEY` (``SIGNALBUS_RABBITMQ_URL``, required) and
    :data:`CONFIG_TIMEOUT_KEY` (``SIGNALBUS_RABBITMQ_TIMEOUT``, optional, seconds).

    :raises KeyError: the URL is not configured.
    :raises ValueError: the URL or the timeout is invalid (the message is redacted).
    """
    settings = config.publisher_settings(mapping)
    return Publisher(settings.url, timeout=settings.timeout)
