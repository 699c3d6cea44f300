"""Benchmark: RabbitMQ throughput of a bare pika loop, the Publisher and ``flushmany``.

    python -m bench.throughput [--url AMQP_URL] [--messages 50000] [--rounds 5]

Three contenders send ``--messages`` persistent messages in bursts of 1000,
waiting for the broker's confirmation of each burst, to the same broker, the
same durable topic exchange and the same bound durable queue (purged after
every run), in rounds that rotate their order:

* ``bare``: the hand-written pika confirm loop of :mod:`bench.rabbitmq`;
* ``publisher``: :meth:`signalbus.rabbitmq.Publisher.publish_messages` with
  prepared :class:`~signalbus.rabbitmq.Message` objects;
* ``refapp-msgs`` (a diagnostic): the Publisher again, with the messages the
  reference app builds, prepared in advance: what the broker alone costs
  ``flushmany``;
* ``flushmany``: ``db.signalbus.flushmany([OrderPlacedSignal])`` of the
  reference app draining ``--messages`` rows end to end: ``DELETE ...
  RETURNING`` bursts, building the messages in :mod:`refapp.publishing`,
  publishing and confirms, commit. Filling the table is not timed.

The bodies of all three are orders encoded as the reference app does. Prints
each run, the median msg/s of each contender and the ratios to ``bare`` (and
of ``flushmany`` to ``refapp-msgs``).
``--profile FILE`` also writes a cProfile of the ``flushmany`` runs.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pika
import sqlalchemy as sa
from flask import Flask

from bench.database import bench_database
from bench.rabbitmq import DEFAULT_URL, BareConfirmLoop
from signalbus.rabbitmq import Message, MessageProperties, Publisher, redact_url

BURST = 1000
ROUTING_KEY = "order.placed"
#: The bare loop of :mod:`bench.rabbitmq` always publishes with this routing key.
BARE_ROUTING_KEY = "bench"

FILL = sa.text(
    "INSERT INTO order_placed_signal (payload) "
    "SELECT json_build_object('id', g, 'customer', 'customer-' || g, "
    "'total_cents', g * 10, 'created_at', '2024-05-06T07:08:09.123456+00:00', "
    "'shipped_at', NULL) FROM generate_series(1, :rows) g"
)


def order_body(number: int) -> bytes:
    """Return the JSON body of order *number*, as the reference app encodes it."""
    order = {
        "id": number,
        "customer": f"customer-{number}",
        "total_cents": number * 10,
        "created_at": "2024-05-06T07:08:09.123456+00:00",
        "shipped_at": None,
    }
    return json.dumps(order, separators=(",", ":")).encode()


def make_messages(exchange: str, count: int) -> list[Message]:
    """Return *count* prepared messages like those of ``OrderPlacedSignal`` rows."""
    return [
        Message(
            order_body(number),
            exchange=exchange,
            routing_key=ROUTING_KEY,
            properties=MessageProperties(
                content_type="application/json", message_id=f"order_placed_signal:{number}"
            ),
        )
        for number in range(1, count + 1)
    ]


def make_refapp_messages(app: Flask, count: int) -> list[Message]:
    """Return the messages ``refapp.publishing`` builds for *count* signal rows."""
    from refapp.models import OrderPlacedSignal
    from refapp.publishing import build_messages

    created_at = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    rows = [
        SimpleNamespace(id=number, payload=order_body(number).decode(), created_at=created_at)
        for number in range(1, count + 1)
    ]
    with app.app_context():
        return build_messages(OrderPlacedSignal, rows)


@contextmanager
def broker_topology(
    url: str, routing_keys: Sequence[str] = (ROUTING_KEY, BARE_ROUTING_KEY)
) -> Iterator[tuple[str, Callable[[], int]]]:
    """Declare a topic exchange and a durable queue bound with *routing_keys*;
    yield (exchange, purge)."""
    name = f"signalbus-throughput-{uuid.uuid4().hex[:8]}"
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    try:
        channel.exchange_declare(name, "topic", durable=True)
        channel.queue_declare(name, durable=True)
        for key in routing_keys:
            channel.queue_bind(name, name, key)

        def purge() -> int:
            return channel.queue_purge(name).method.message_count

        yield name, purge
    finally:
        channel.queue_delete(name)
        channel.exchange_delete(name)
        connection.close()


def create_refapp(database_url: str, amqp_url: str, exchange: str) -> Flask:
    """Create the reference app on *database_url*, publishing to *exchange*."""
    from refapp import create_app
    from refapp.models import db

    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": database_url,
            "SIGNALBUS_RABBITMQ_URL": amqp_url,
            "SIGNALBUS_EXCHANGE": exchange,
            "SIGNALBUS_BURST_COUNT": BURST,
        }
    )
    with app.app_context():
        db.create_all()
    return app


class Contenders:
    """The three ways of sending the same number of messages, each timed alone."""

    def __init__(self, app: Flask, amqp_url: str, exchange: str, messages: int) -> None:
        self.app = app
        self.exchange = exchange
        self.messages = messages
        self.bursts = messages // BURST
        prepared = make_messages(exchange, BURST)
        self.prepared = prepared
        self.payloads = [(m.body, m.properties.message_id or "") for m in prepared]
        self.refapp_messages = make_refapp_messages(app, BURST)
        self.bare = BareConfirmLoop(amqp_url)
        self.publisher = Publisher(amqp_url)
        self.profile: cProfile.Profile | None = None

    def close(self) -> None:
        self.bare.close()
        self.publisher.close()

    def run_bare(self) -> int:
        for _ in range(self.bursts):
            self.bare.publish_burst(self.exchange, self.payloads)
        return self.bursts * BURST

    def run_publisher(self) -> int:
        for _ in range(self.bursts):
            self.publisher.publish_messages(self.prepared)
        return self.bursts * BURST

    def run_refapp_messages(self) -> int:
        for _ in range(self.bursts):
            self.publisher.publish_messages(self.refapp_messages)
        return self.bursts * BURST

    def prepare_flushmany(self) -> None:
        from refapp.models import db

        with self.app.app_context():
            with db.engine.begin() as connection:
                connection.execute(FILL, {"rows": self.bursts * BURST})
            with db.engine.connect() as connection:
                autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
                autocommit.execute(sa.text("VACUUM ANALYZE order_placed_signal"))

    def run_flushmany(self) -> int:
        from refapp.models import OrderPlacedSignal, db

        with self.app.app_context():
            if self.profile is not None:
                self.profile.enable()
            try:
                return db.signalbus.flushmany([OrderPlacedSignal])
            finally:
                if self.profile is not None:
                    self.profile.disable()

    def warm_up(self) -> None:
        """Open every connection and fill every cache once, untimed."""
        self.bare.publish_burst(self.exchange, self.payloads)
        self.publisher.publish_messages(self.prepared)
        self.prepare_flushmany()
        self.run_flushmany()


def timed(run: Callable[[], int], expected: int) -> float:
    """Return the msg/s of *run*, checking it sent *expected* messages."""
    started = time.perf_counter()
    sent = run()
    elapsed = time.perf_counter() - started
    assert sent == expected, f"sent {sent} of {expected} messages"
    return sent / elapsed


def run(amqp_url: str, messages: int, rounds: int, profile_file: str | None) -> None:
    names = ("bare", "publisher", "refapp-msgs", "flushmany")
    rates: dict[str, list[float]] = {name: [] for name in names}
    database = f"signalbus_bench_throughput_{os.getpid()}"
    with bench_database(database) as database_url, broker_topology(amqp_url) as (exchange, purge):
        app = create_refapp(database_url, amqp_url, exchange)
        contenders = Contenders(app, amqp_url, exchange, messages)
        expected = contenders.bursts * BURST
        print(f"broker {redact_url(amqp_url)}: {rounds} rounds x {expected:,} messages")
        try:
            contenders.warm_up()
            purge()
            if profile_file:
                contenders.profile = cProfile.Profile()
            runners: dict[str, Callable[[], int]] = {
                "bare": contenders.run_bare,
                "publisher": contenders.run_publisher,
                "refapp-msgs": contenders.run_refapp_messages,
                "flushmany": contenders.run_flushmany,
            }
            for number in range(rounds):
                order = names[number % len(names) :] + names[: number % len(names)]
                for name in order:
                    if name == "flushmany":
                        contenders.prepare_flushmany()
                    rates[name].append(timed(runners[name], expected))
                    routed = purge()
                    assert routed == expected, f"{name}: {routed} of {expected} routed"
                shown = "  ".join(f"{name} {rates[name][-1]:8,.0f}" for name in names)
                print(f"round {number + 1}: {shown}  msg/s")
        finally:
            contenders.close()
            _dispose(app)
    report(rates)
    if profile_file and contenders.profile is not None:
        contenders.profile.dump_stats(profile_file)
        print(f"cProfile of the flushmany runs: {profile_file}")


def _dispose(app: Flask) -> None:
    from refapp.models import db

    with app.app_context():
        db.engine.dispose()


def report(rates: dict[str, list[float]]) -> None:
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, median in medians.items():
        print(f"median {name:9} {median:8,.0f} msg/s")
    bare = medians["bare"]
    print(f"ratio publisher/bare {medians['publisher'] / bare:.3f}  (target >= 0.95)")
    print(f"ratio flushmany/bare {medians['flushmany'] / bare:.3f}  (target >= 0.90)")
    refapp_ratio = medians["flushmany"] / medians["refapp-msgs"]
    print(f"ratio flushmany/refapp-msgs {refapp_ratio:.3f}  (the cost of the database side)")


def main(argv: Any = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("SIGNALBUS_TEST_RABBITMQ_URL", DEFAULT_URL))
    parser.add_argument("--messages", type=int, default=50_000, help="messages per run")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each contender")
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile of flushmany")
    args = parser.parse_args(argv)
    if args.messages < BURST:
        parser.error(f"--messages must be at least {BURST}")
    run(args.url, args.messages, args.rounds, args.profile)


if __name__ == "__main__":
    main()
