"""The errors of a publish call: :class:`PublishError` and what it can be."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import OutageError, SignalBusError
from .messages import Message

__all__ = [
    "ChannelClosed",
    "ConfirmTimeout",
    "ConnectionFailed",
    "MessageNacked",
    "MessageReturned",
    "PublishError",
    "Return",
]


class PublishError(SignalBusError):
    """A publish call did not get every message confirmed.

    :ivar failed: the messages of the call that are not known to be safely delivered:
        nacked, returned, or never confirmed. Every other message of the call was
        confirmed by the broker. Messages listed here may still have reached a queue,
        so publish them again rather than assume they were lost or delivered.
    """

    def __init__(self, text: str, failed: Sequence[Message] = ()) -> None:
        super().__init__(text)
        self.failed: tuple[Message, ...] = tuple(failed)


class ConnectionFailed(PublishError, OutageError):
    """The connection could not be opened, or it was lost during the call (an outage)."""


class ChannelClosed(PublishError, OutageError):
    """The broker closed the channel, e.g. ``404 NOT_FOUND`` for a missing exchange (an outage).

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


@dataclass(frozen=True)
class Return:
    """A message the broker returned (``basic.return``), and why.

    :param reply_code: the AMQP reply code, e.g. ``312``.
    :param reply_text: the broker's explanation, e.g. ``"NO_ROUTE"``.
    :param exchange: the exchange the message was published to.
    :param routing_key: the routing key it was published with.
    """

    reply_code: int
    reply_text: str
    exchange: str
    routing_key: str

    def __str__(self) -> str:
        return (
            f"{self.reply_code} {self.reply_text} "
            f"(exchange {self.exchange!r}, routing key {self.routing_key!r})"
        )


class MessageReturned(PublishError):
    """At least one mandatory message could not be routed to any queue.

    :ivar returns: a :class:`Return` for each returned message, in the order the broker
        returned them.
    """

    def __init__(
        self, text: str, failed: Sequence[Message] = (), returns: Sequence[Return] = ()
    ) -> None:
        super().__init__(text, failed)
        self.returns: tuple[Return, ...] = tuple(returns)

    @property
    def replies(self) -> tuple[tuple[int, str], ...]:
        """``(reply_code, reply_text)`` of each of :attr:`returns`, e.g. ``(312, "NO_ROUTE")``."""
        return tuple((r.reply_code, r.reply_text) for r in self.returns)


class ConfirmTimeout(PublishError, OutageError):
    """The broker did not confirm every message before the publisher's timeout (an outage)."""
