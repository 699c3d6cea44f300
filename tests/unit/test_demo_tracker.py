"""The parts of the demo (refapp/demo.py) that need no server: what it prints, and when."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Sequence

from refapp.demo import ReportingPublisher, Tracker, describe_broker
from signalbus.rabbitmq import Message, MessageProperties


def test_descriptions_never_show_a_password() -> None:
    assert "pa55" not in describe_broker("amqp://shop:pa55@mq:5672/%2F", "signalbus")
    assert "none" in describe_broker(None, "signalbus")


def message(message_id: str, order_id: int = 7) -> Message:
    """A message of signal row *message_id* about order *order_id*."""
    return Message(
        f'{{"id": {order_id}}}'.encode(),
        routing_key="order.placed",
        properties=MessageProperties(message_id=message_id),
    )


def test_tracker_reports_a_message_once_sent_and_consumed_in_any_order() -> None:
    out = io.StringIO()
    tracker = Tracker(2, consumed=True, out=out)
    tracker.committed(["t:1", "t:2"], at=10.0)
    tracker.consumed("t:1", at=10.003)  # the queue can deliver before the confirm
    assert out.getvalue() == ""  # not before its send was reported
    tracker.sent([message("t:1", 41), message("t:2", 42)], at=10.002)
    tracker.sent([message("t:0", 40)], at=10.004)  # not of this run
    assert not tracker.wait(0)
    tracker.consumed("t:2", at=10.005)
    assert tracker.wait(0)
    assert out.getvalue().splitlines() == [
        'consumed order.placed  order=41   {"id": 41}  sent 2.0 ms, consumed 3.0 ms',
        'relayed  order.placed  order=40   {"id": 40}  (from an earlier run)',
        'consumed order.placed  order=42   {"id": 42}  sent 2.0 ms, consumed 5.0 ms',
    ]


def test_tracker_without_a_broker_reports_each_message_once_sent() -> None:
    out = io.StringIO()
    tracker = Tracker(1, consumed=False, out=out)
    tracker.committed(["t:5"], at=1.0)
    tracker.sent([message("t:5", 3)], at=1.0125)
    assert tracker.wait(0)
    assert out.getvalue() == 'relayed  order.placed  order=3    {"id": 3}  12.5 ms\n'


class ConsumedBeforeConfirmed:
    """A publisher whose broker delivers each message to the demo's queue, then confirms."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def publish_messages(self, messages: Sequence[Message]) -> None:
        for sent in messages:
            self.tracker.consumed(sent.properties.message_id or "", time.perf_counter())
        time.sleep(0.01)  # the confirmation takes longer than the delivery


def test_a_message_consumed_before_its_confirmation_is_never_consumed_before_sent() -> None:
    out = io.StringIO()
    tracker = Tracker(1, consumed=True, out=out)
    tracker.committed(["t:1"], at=time.perf_counter())
    ReportingPublisher(ConsumedBeforeConfirmed(tracker), tracker).publish_messages([message("t:1")])
    assert tracker.wait(0)
    latencies = re.fullmatch(r".*  sent (\S+) ms, consumed (\S+) ms\n", out.getvalue())
    assert latencies is not None, out.getvalue()
    assert float(latencies[1]) <= float(latencies[2]) < 10
