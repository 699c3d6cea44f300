"""The bookkeeping of one burst's publisher confirms and returns, with no broker."""

from __future__ import annotations

from signalbus.rabbitmq import ConfirmTimeout, Message, MessageNacked, MessageReturned, Return
from signalbus.rabbitmq.confirms import BurstConfirms

BROKER = "amqp://guest:***@rabbitmq:5672/%2F"


def no_route(message: Message) -> Return:
    return Return(312, "NO_ROUTE", message.exchange, message.routing_key)


def burst_of(count: int, first_tag: int = 1) -> BurstConfirms:
    messages = [Message(b"m%d" % i, "signalbus", "order.placed") for i in range(count)]
    return BurstConfirms(messages, first_tag)


def test_single_acks_complete_the_burst_in_any_order() -> None:
    burst = burst_of(3, first_tag=11)
    assert burst.end_tag == 14
    for tag in (13, 11):
        burst.ack(tag)
        assert not burst.complete
    burst.ack(12)
    assert burst.complete
    assert burst.failed() == ()
    assert burst.rejection_error(BROKER) is None


def test_a_multiple_ack_confirms_every_tag_up_to_it() -> None:
    burst = burst_of(5, first_tag=3)
    burst.ack(4)
    burst.ack(6, multiple=True)
    assert burst.failed() == (burst.messages[4],)
    burst.ack(7, multiple=True)
    assert burst.complete


def test_tags_outside_the_burst_are_ignored() -> None:
    burst = burst_of(2, first_tag=5)
    burst.ack(4)  # the previous burst's
    burst.nack(3, multiple=True)
    burst.ack(7)  # none yet
    assert burst.failed() == tuple(burst.messages)
    burst.ack(100, multiple=True)
    assert burst.complete
    assert burst.rejection_error(BROKER) is None


def test_nacks_fail_their_messages() -> None:
    burst = burst_of(5)
    burst.ack(1)
    burst.nack(3, multiple=True)
    burst.ack(4)
    burst.nack(5)
    assert burst.complete
    messages = burst.messages
    assert burst.failed() == (messages[1], messages[2], messages[4])
    error = burst.rejection_error(BROKER)
    assert isinstance(error, MessageNacked)
    assert error.failed == burst.failed()
    assert str(error) == f"RabbitMQ at {BROKER} rejected (nacked) 3 of 5 messages"


def test_a_return_fails_its_message_and_names_where_it_went() -> None:
    burst = burst_of(3)
    burst.returned(no_route(burst.messages[1]), b"m1")
    burst.ack(3, multiple=True)  # the broker acks a returned message too
    assert burst.complete
    error = burst.rejection_error(BROKER)
    assert isinstance(error, MessageReturned)
    assert error.failed == (burst.messages[1],)
    assert error.replies == ((312, "NO_ROUTE"),)
    assert error.returns == (Return(312, "NO_ROUTE", "signalbus", "order.placed"),)
    assert str(error) == (
        f"RabbitMQ at {BROKER} returned 1 of 3 messages as unroutable: "
        "312 NO_ROUTE (exchange 'signalbus', routing key 'order.placed')"
    )


def test_returns_are_matched_in_publishing_order() -> None:
    messages = [
        Message(b"same", "signalbus", "order.placed"),
        Message(b"same", "signalbus", "order.shipped"),
        Message(b"same", "signalbus", "order.shipped"),
        Message(b"same", "signalbus", "order.placed"),
    ]
    burst = BurstConfirms(messages)
    burst.returned(no_route(messages[1]), b"same")
    burst.returned(no_route(messages[3]), b"same")
    burst.ack(4, multiple=True)
    assert burst.failed() == (messages[1], messages[3])


def test_a_return_matching_no_message_fails_the_whole_burst() -> None:
    burst = burst_of(3)
    burst.returned(Return(312, "NO_ROUTE", "signalbus", "order.placed"), b"not sent")
    burst.ack(3, multiple=True)
    error = burst.rejection_error(BROKER)
    assert isinstance(error, MessageReturned)
    assert error.failed == tuple(burst.messages)


def test_more_returns_than_messages_matched_fail_the_whole_burst() -> None:
    burst = burst_of(2)
    for message in burst.messages:
        burst.returned(no_route(message), message.body)
    burst.returned(no_route(burst.messages[0]), b"m0")  # once more: matches no message
    assert burst.failed() == tuple(burst.messages)


def test_nacks_take_precedence_over_returns() -> None:
    burst = burst_of(3)
    burst.returned(no_route(burst.messages[0]), b"m0")
    burst.ack(1)
    burst.nack(2)
    burst.ack(3)
    error = burst.rejection_error(BROKER)
    assert isinstance(error, MessageNacked)
    assert error.failed == tuple(burst.messages[:2])


def test_an_error_shows_three_returns_at_most() -> None:
    burst = burst_of(5)
    for message in burst.messages:
        burst.returned(no_route(message), message.body)
    burst.ack(5, multiple=True)
    text = str(burst.rejection_error(BROKER))
    assert text.count("312 NO_ROUTE") == 3
    assert text.endswith("routing key 'order.placed') and 2 more")


def test_a_timeout_fails_the_unconfirmed_messages() -> None:
    burst = burst_of(4)
    burst.ack(2, multiple=True)
    burst.returned(no_route(burst.messages[2]), b"m2")
    error = burst.timeout_error(BROKER)
    assert isinstance(error, ConfirmTimeout)
    assert error.failed == tuple(burst.messages[2:])
    assert str(error) == f"RabbitMQ at {BROKER} did not confirm 2 of 4 messages in time"
    blocked = burst.timeout_error(BROKER, blocked=True)
    assert str(blocked).endswith("in time (the broker blocks publishing: resource alarm)")


def test_an_empty_burst_is_complete() -> None:
    burst = BurstConfirms((), first_tag=7)
    assert burst.complete
    assert burst.end_tag == 7
    assert burst.rejection_error(BROKER) is None
