"""Benchmark :class:`signalbus.rabbitmq.Publisher` against a bare pika confirm loop.

Run ``python -m bench.rabbitmq [--url URL] [--rounds N] [--messages N] [--burst N]``.

Both contenders publish the same persistent messages (JSON body, ``content_type``, unique
``message_id``) in bursts of ``--burst``, wait until the broker confirmed the whole burst,
and repeat until ``--messages`` were sent; rounds alternate between them (A B B A ...),
on the same broker, in the same process. The queue is durable and purged between rounds.

* bare: a pika ``SelectConnection`` in confirm mode. It publishes a burst with
  ``channel.basic_publish`` (building each ``BasicProperties`` inline) and polls the
  I/O loop until the last delivery tag is acked: the least work and bookkeeping possible
  (it assumes in-order acks and no nacks, which holds for this single-queue setup).
* publisher: ``Publisher.publish_messages`` with lists of prepared ``Message`` objects.

Prints the median msg/s (and client CPU time per message) of each and the ratio
publisher/bare.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pika
from pika.adapters.select_connection import SelectConnection

from signalbus.rabbitmq import Message, MessageProperties, Publisher, redact_url

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def make_payloads(count: int) -> list[tuple[bytes, str]]:
    """Return ``count`` (body, message_id) pairs looking like signal messages."""
    return [
        (
            f'{{"id": {i}, "kind": "order.created", "payload": "{"x" * 120}"}}'.encode(),
            f"msg-{i}",
        )
        for i in range(count)
    ]


class BareConfirmLoop:
    """The baseline: a hand-written pika publisher with asynchronous confirms."""

    def __init__(self, url: str) -> None:
        self.connection = SelectConnection(
            pika.URLParameters(url),
            on_open_callback=self._on_open,
            on_open_error_callback=self._on_error,
            on_close_callback=self._on_error,
        )
        self.channel: Any = None
        self.ready = False
        self.confirmed = 0
        self.target = 0
        self.connection.ioloop.activate_poller()
        self._run_until(lambda: self.ready)

    def _on_open(self, connection: SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_channel)

    def _on_channel(self, channel: Any) -> None:
        self.channel = channel
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_ready)

    def _on_ready(self, _frame: Any) -> None:
        self.ready = True

    def _on_error(self, _connection: Any, error: BaseException) -> None:
        raise RuntimeError(f"bare connection failed: {error!r}")

    def _run_until(self, done: Callable[[], bool]) -> None:
        ioloop = self.connection.ioloop
        while not done():
            ioloop.poll()
            ioloop.process_timeouts()

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        assert isinstance(method, pika.spec.Basic.Ack), method
        self.confirmed = method.delivery_tag

    def publish_burst(self, exchange: str, payloads: Sequence[tuple[bytes, str]]) -> None:
        publish = self.channel.basic_publish
        for body, message_id in payloads:
            props = pika.BasicProperties(
                content_type="application/json", delivery_mode=2, message_id=message_id
            )
            publish(exchange, "bench", body, props, True)
        self.target += len(payloads)
        self._run_until(lambda: self.confirmed >= self.target)

    def close(self) -> None:
        self.connection.close()


def run_round(publish: Callable[[int], None], bursts: int, burst: int) -> tuple[float, float]:
    """Publish ``bursts`` bursts; return messages per second and client CPU µs per message."""
    start, cpu_start = time.perf_counter(), time.process_time()
    for index in range(bursts):
        publish(index)
    count = bursts * burst
    cpu = (time.process_time() - cpu_start) / count * 1e6
    return count / (time.perf_counter() - start), cpu


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("SIGNALBUS_TEST_RABBITMQ_URL", DEFAULT_URL))
    parser.add_argument("--rounds", type=int, default=6, help="rounds per contender")
    parser.add_argument("--messages", type=int, default=50_000, help="messages per round")
    parser.add_argument("--burst", type=int, default=1000, help="messages per confirm wait")
    args = parser.parse_args(argv)
    bursts = max(1, args.messages // args.burst)

    name = f"signalbus-bench-{uuid.uuid4().hex[:8]}"
    admin = pika.BlockingConnection(pika.URLParameters(args.url))
    admin_channel = admin.channel()
    admin_channel.exchange_declare(name, "direct", durable=True)
    admin_channel.queue_declare(name, durable=True)
    admin_channel.queue_bind(name, name, "bench")

    payloads = make_payloads(args.burst)
    bare_bursts = [payloads] * bursts
    messages = [
        Message(
            body,
            exchange=name,
            routing_key="bench",
            properties=MessageProperties(content_type="application/json", message_id=mid),
        )
        for body, mid in payloads
    ]
    bare = BareConfirmLoop(args.url)
    publisher = Publisher(args.url)
    contenders: dict[str, Callable[[int], None]] = {
        "bare": lambda i: bare.publish_burst(name, bare_bursts[i]),
        "publisher": lambda _i: publisher.publish_messages(messages),
    }
    results: dict[str, list[float]] = {"bare": [], "publisher": []}
    cpu: dict[str, list[float]] = {"bare": [], "publisher": []}
    print(f"broker {redact_url(args.url)}: {args.rounds} rounds x {bursts} bursts x {args.burst}")
    try:
        contenders["bare"](0)  # warm both connections up
        contenders["publisher"](0)
        admin_channel.queue_purge(name)
        for round_no in range(args.rounds):
            order = ("bare", "publisher") if round_no % 2 == 0 else ("publisher", "bare")
            for label in order:
                rate, cpu_us = run_round(contenders[label], bursts, args.burst)
                admin_channel.queue_purge(name)
                results[label].append(rate)
                cpu[label].append(cpu_us)
                print(
                    f"  round {round_no + 1} {label:9s} {rate:8.0f} msg/s {cpu_us:6.1f} µs CPU/msg"
                )
    finally:
        bare.close()
        publisher.close()
        admin_channel.queue_delete(name)
        admin_channel.exchange_delete(name)
        admin.close()

    medians = {label: statistics.median(rates) for label, rates in results.items()}
    for label, rate in medians.items():
        cpu_us = statistics.median(cpu[label])
        print(f"{label:9s} median {rate:8.0f} msg/s {cpu_us:6.1f} µs CPU/msg")
    print(f"ratio publisher/bare {medians['publisher'] / medians['bare']:.3f}")


if __name__ == "__main__":
    main()
