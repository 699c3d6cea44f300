"""What the broker said about one burst of messages published in confirm mode.

Pure bookkeeping, with no connection: the link feeds it the broker's acks, nacks and
returns, and asks it which messages failed and what to raise.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import ConfirmTimeout, MessageNacked, MessageReturned, PublishError, Return
from .messages import Message

__all__ = ["BurstConfirms"]

_SHOWN_RETURNS = 3
"""How many returns an error message describes."""


class BurstConfirms:
    """The confirmations of one burst: which messages are settled, nacked or returned.

    On a confirm-mode channel the broker numbers published messages 1, 2, 3 ...; the
    burst's messages carry the delivery tags ``first_tag``, ``first_tag + 1`` ... in
    publishing order, and :attr:`end_tag` is the first tag of the next burst. Tags
    outside the burst are ignored.

    :param messages: the burst, in publishing order.
    :param first_tag: the delivery tag of its first message.
    """

    def __init__(self, messages: Sequence[Message], first_tag: int = 1) -> None:
        self.messages = messages
        self.first_tag = first_tag
        self.end_tag = first_tag + len(messages)
        self._unconfirmed = set(range(first_tag, self.end_tag))
        self._low_tag = first_tag  # no tag below it is unconfirmed
        self._nacked: set[int] = set()
        self._returned: set[int] = set()
        self._returns: list[Return] = []
        self._return_cursor = 0
        self._unmatched_return = False

    @property
    def complete(self) -> bool:
        """Whether the broker acked or nacked every message of the burst."""
        return not self._unconfirmed

    def ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        """Record ``basic.ack`` of ``delivery_tag`` (and every earlier tag if ``multiple``)."""
        self._settle(delivery_tag, multiple)

    def nack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        """Record ``basic.nack`` of ``delivery_tag`` (and every earlier tag if ``multiple``)."""
        self._nacked.update(self._settle(delivery_tag, multiple))

    def returned(self, returned: Return, body: bytes) -> None:
        """Record ``basic.return`` of a message with ``body``.

        The broker returns a burst's messages in publishing order, each before its ack,
        and names neither a delivery tag nor a message id: a return is matched to the
        first message after the previous match with the same body, exchange and routing
        key. A return that matches no message fails the whole burst.
        """
        self._returns.append(returned)
        messages = self.messages
        for index in range(self._return_cursor, len(messages)):
            message = messages[index]
            if (
                message.body == body
                and message.routing_key == returned.routing_key
                and message.exchange == returned.exchange
            ):
                self._returned.add(self.first_tag + index)
                self._return_cursor = index + 1
                return
        self._unmatched_return = True

    def failed(self) -> tuple[Message, ...]:
        """The messages not known to be delivered (unconfirmed, nacked or returned), in order.

        Every message, if a return matched none: the returned one cannot be told apart.
        """
        if self._unmatched_return:
            return tuple(self.messages)
        tags = sorted(self._unconfirmed | self._nacked | self._returned)
        return tuple(self.messages[tag - self.first_tag] for tag in tags)

    def rejection_error(self, broker: str) -> PublishError | None:
        """The error a complete burst ends with: nacks before returns, or ``None``.

        :param broker: how the error names the broker (its redacted URL).
        """
        count = len(self.messages)
        if self._nacked:
            return MessageNacked(
                f"RabbitMQ at {broker} rejected (nacked) {len(self._nacked)} of {count} messages",
                self.failed(),
            )
        if self._returns:
            returns = self._returns
            shown = ", ".join(str(r) for r in returns[:_SHOWN_RETURNS])
            hidden = len(returns) - _SHOWN_RETURNS
            more = f" and {hidden} more" if hidden > 0 else ""
            return MessageReturned(
                f"RabbitMQ at {broker} returned {len(returns)} of {count} messages "
                f"as unroutable: {shown}{more}",
                self.failed(),
                returns,
            )
        return None

    def timeout_error(self, broker: str, *, blocked: bool = False) -> ConfirmTimeout:
        """The error of a burst still incomplete at the deadline.

        :param broker: how the error names the broker (its redacted URL).
        :param blocked: whether the broker blocks publishing (a resource alarm).
        """
        why = " (the broker blocks publishing: resource alarm)" if blocked else ""
        return ConfirmTimeout(
            f"RabbitMQ at {broker} did not confirm {len(self._unconfirmed)} of "
            f"{len(self.messages)} messages in time{why}",
            self.failed(),
        )

    def _settle(self, tag: int, multiple: bool) -> list[int]:
        """Mark ``tag`` (and every earlier one if ``multiple``) confirmed; return the tags."""
        unconfirmed = self._unconfirmed
        if multiple:
            last = min(tag, self.end_tag - 1)
            tags = [t for t in range(self._low_tag, last + 1) if t in unconfirmed]
            unconfirmed.difference_update(tags)
        elif tag in unconfirmed:
            unconfirmed.discard(tag)
            tags = [tag]
        else:
            return []
        low = self._low_tag
        while low < self.end_tag and low not in unconfirmed:
            low += 1
        self._low_tag = low
        return tags
