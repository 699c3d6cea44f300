"""The smallest correct relay of the reference app's signals: the baseline of the listener.

    python -m bench.bare_relay CONNINFO AMQP_URL EXCHANGE

(``CONNINFO``: a libpq connection string or ``postgresql://`` URL; ``EXCHANGE``:
an existing topic exchange.)

Hand-written with psycopg 3 and pika, no signalbus, in one thread: an
autocommit connection LISTENs on ``signalbus`` (the channel the reference
app's triggers notify); on each wake-up, and once at the start, a second
connection deletes bursts of ``order_placed_signal`` rows (``DELETE ...
RETURNING`` of the oldest unlocked ones) and publishes each row as the
reference app does (persistent, mandatory, ``application/json``, message id
``order_placed_signal:<id>``) on a channel in confirm mode, waits until the
broker confirmed the whole burst, and commits only then: at least once, like
signalbus. A nacked or returned message or any error ends the process with
the transaction rolled back, the rows kept. Like the listener, it commits
without waiting for the WAL flush (``synchronous_commit`` off): a commit lost
in a crash only sends its rows again. Prints ``listening`` once ready.

pika's ``SelectConnection`` drives the loop: its poller also watches the
LISTEN connection's socket, so one wait serves wake-ups, confirms and
heartbeats. (A ``BlockingConnection`` channel in confirm mode waits for each
message's confirm, a disk flush of the broker, before publishing the next:
about 3 ms a message, too slow for 1000 rows/s.)
"""

from __future__ import annotations

import sys
from typing import Any

import pika
import psycopg
from pika.adapters.select_connection import PollEvents, SelectConnection

CHANNEL = "signalbus"
ROUTING_KEY = "order.placed"
BURST = 1000
DRAIN = (
    "DELETE FROM order_placed_signal WHERE id IN (SELECT id FROM order_placed_signal"
    " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id, payload"
)


class BareRelay:
    def __init__(self, conninfo: str, amqp_url: str, exchange: str) -> None:
        self.exchange = exchange
        self.listener = psycopg.connect(conninfo, autocommit=True)
        self.listener.execute(f"LISTEN {CHANNEL}")
        self.database = psycopg.connect(conninfo, autocommit=True)
        self.database.execute("SET synchronous_commit TO OFF")  # as the listener does
        self.database.autocommit = False
        self.channel: Any = None
        self.published = self.confirmed = 0
        self.failure = ""
        self.woken = True  # drain once at the start
        self.amqp = SelectConnection(
            pika.URLParameters(amqp_url), self.on_open, self.on_error, self.on_error
        )
        self.amqp.ioloop.activate_poller()
        self.amqp.ioloop.add_handler(self.listener.fileno(), self.on_wake, PollEvents.READ)

    def on_open(self, connection: SelectConnection) -> None:
        connection.channel(on_open_callback=self.on_channel)

    def on_channel(self, channel: Any) -> None:
        channel.add_on_return_callback(self.on_return)
        channel.confirm_delivery(self.on_confirm, lambda _frame: setattr(self, "channel", channel))

    def on_error(self, _connection: Any, error: Any) -> None:
        raise RuntimeError(f"RabbitMQ connection failed: {error!r}")

    def on_return(self, *_returned: Any) -> None:
        self.failure = "a message was returned (unroutable)"

    def on_confirm(self, frame: Any) -> None:
        if isinstance(frame.method, pika.spec.Basic.Nack):
            self.failure = "a message was nacked"
        self.confirmed = max(self.confirmed, frame.method.delivery_tag)

    def on_wake(self, _fd: int, _events: int) -> None:
        list(self.listener.notifies(timeout=0))  # read them all: the socket is drained
        self.woken = True

    def wait_until(self, done: Any) -> None:
        while not done() and not self.failure:
            self.amqp.ioloop.poll()
            self.amqp.ioloop.process_timeouts()
        if self.failure:
            raise RuntimeError(self.failure)

    def drain(self) -> None:
        """Send every row, a burst per transaction, committed once the broker confirmed it."""
        self.woken = False
        while True:
            rows = self.database.execute(DRAIN, (BURST,), prepare=True).fetchall()
            for row_id, payload in rows:
                properties = pika.BasicProperties(
                    content_type="application/json",
                    delivery_mode=2,
                    message_id=f"order_placed_signal:{row_id}",
                )
                self.channel.basic_publish(
                    self.exchange, ROUTING_KEY, payload.encode(), properties, True
                )
            self.published += len(rows)
            self.wait_until(lambda: self.confirmed >= self.published)
            self.database.commit()
            if len(rows) < BURST:
                return

    def run(self) -> None:
        self.wait_until(lambda: self.channel is not None)
        self.drain()
        print("listening", flush=True)
        while True:
            self.wait_until(lambda: self.woken)
            self.drain()


if __name__ == "__main__":
    BareRelay(*sys.argv[1:4]).run()
