"""One connection and its confirm-mode channel, owned by one thread."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import pika
import pika.exceptions
from pika.adapters.select_connection import IOLoop
from pika.spec import Basic

from ..redaction import Redactor
from ._pika import BatchingConnection
from .confirms import BurstConfirms
from .errors import ChannelClosed, ConnectionFailed, PublishError, Return
from .messages import Message, MessageProperties

__all__ = ["Link"]

logger = logging.getLogger(__name__)

_CLOSE_TIMEOUT = 5.0
"""Longest wait, in seconds, for a graceful close of a connection being discarded."""

_POLL_SLICE = 0.05
"""Longest wait, in seconds, of one timer bounding a wait for I/O.

pika leaves a cancelled timer in its heap until it is due: a timer set to a
30 s deadline and cancelled once the confirm came would stay there 30 s, and
at a few hundred bursts a second the heap of dead timers makes every timer
operation slow. Short slices keep it small.
"""


class Link:
    """A connection with one confirm-mode channel, driven by a private I/O loop.

    :param parameters: where and how to connect.
    :param name: how log lines and errors name the broker (its redacted URL).
    :param redact: masks the URL's password in the texts of pika's errors.

    The connection opens in the background: :meth:`wait_open` before :meth:`publish`.
    All its methods must be called from the thread that created it.
    """

    def __init__(self, parameters: pika.URLParameters, name: str, redact: Redactor) -> None:
        self.pid = os.getpid()
        self._name = name
        self._redact = redact
        self._ioloop = IOLoop()
        self._ioloop.activate_poller()
        self._connection: BatchingConnection | None = None
        self._channel: Any = None
        self._ready = False
        self._blocked = False
        self._slice_over = False
        #: When :meth:`is_usable` last processed pending input (monotonic seconds).
        self._polled_at = -float("inf")
        self._closing = False
        #: The first failure a callback reported; the link is unusable from then on.
        self.error: PublishError | None = None
        self._burst = BurstConfirms(())
        try:
            self._connection = BatchingConnection(
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
        """Run the I/O loop until the channel is ready for publishing.

        :param deadline: :func:`time.monotonic` time at which to give up.
        :raises ConnectionFailed: the connection failed or was not open by ``deadline``.
        """
        self._run_until(lambda: self._ready, deadline)
        if not self._ready:
            raise ConnectionFailed(f"timed out connecting to RabbitMQ at {self._name}")

    def _on_connection_open(self, connection: BatchingConnection) -> None:
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
        return self._redact(_root_cause(error))

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
            text = self._redact(reason.reply_text)
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
        logger.info("RabbitMQ at %s takes messages again", self._name)

    # -- I/O loop -----------------------------------------------------------------------

    def _on_slice_end(self) -> None:
        self._slice_over = True

    def _run_until(self, done: Callable[[], bool], deadline: float) -> None:
        """Process I/O until ``done()``, an error, or ``deadline`` (monotonic seconds).

        Raises the error recorded by a callback, if any. Waits in slices of at
        most :data:`_POLL_SLICE` seconds.
        """
        ioloop = self._ioloop
        timer = None
        try:
            while not (done() or self.error):
                if timer is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._slice_over = False
                    timer = ioloop.call_later(min(remaining, _POLL_SLICE), self._on_slice_end)
                ioloop.poll()
                ioloop.process_timeouts()
                if self._slice_over:
                    timer = None
        finally:
            if timer is not None:
                ioloop.remove_timeout(timer)
        if self.error is not None:
            raise self.error

    @property
    def blocked(self) -> bool:
        """Whether the broker blocks this connection from publishing (a resource alarm).

        Up to date as of the last call that processed input (:meth:`is_usable`).
        """
        return self._blocked

    def is_usable(self, fresh: float = 0.0) -> bool:
        """Process pending input without blocking; tell if the link can still publish.

        Reveals a connection the broker closed while the link sat idle, and
        whether it blocks or unblocked publishing meanwhile. Input processed
        less than *fresh* seconds ago is not looked for again.
        """
        if self.error is not None or not self._ready or self.pid != os.getpid():
            return False
        now = time.monotonic()
        if now - self._polled_at >= fresh:
            for _ in range(2):
                self._ioloop.call_later(0, _noop)
                self._ioloop.poll()
                self._ioloop.process_timeouts()
            self._polled_at = now
        connection, channel = self._connection, self._channel
        return (
            self.error is None
            and connection is not None
            and connection.is_open
            and channel is not None
            and channel.is_open
        )

    # -- publishing ---------------------------------------------------------------------

    def publish(self, messages: Sequence[Message], deadline: float) -> None:
        """Publish ``messages`` and wait until ``deadline`` for all their confirmations.

        :raises PublishError: see :meth:`~signalbus.rabbitmq.Publisher.publish_messages`.
        """
        connection = self._connection
        assert connection is not None and self._ready, "publish() before wait_open()"
        publish = self._channel.basic_publish
        burst = self._burst = BurstConfirms(messages, first_tag=self._burst.end_tag)
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
        try:
            self._run_until(lambda: burst.complete, deadline)
        except PublishError as error:
            error.failed = burst.failed()
            raise
        if not burst.complete:
            raise burst.timeout_error(self._name, blocked=self._blocked)
        rejection = burst.rejection_error(self._name)
        if rejection is not None:
            raise rejection

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if isinstance(method, Basic.Nack):
            self._burst.nack(method.delivery_tag, multiple=method.multiple)
        else:
            self._burst.ack(method.delivery_tag, multiple=method.multiple)

    def _on_return(self, _channel: Any, method: Any, _properties: Any, body: bytes) -> None:
        returned = Return(method.reply_code, method.reply_text, method.exchange, method.routing_key)
        self._burst.returned(returned, body)

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


def _noop() -> None:
    """Timer callback that only makes the I/O loop return."""
