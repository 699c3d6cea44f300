"""Broker faults against the reference app's real sidecar and a real RabbitMQ.

``flask --app refapp signalbus listen`` (or ``flushmany``) runs as a
subprocess on a fresh database and a fresh virtual host of the session's own
RabbitMQ node (:mod:`tests.rabbitmq_node`: stopping it disturbs no other broker),
reached as a user with a password; a consumer thread (:mod:`tests.rabbitmq_broker`)
records the ``message_id`` of every message delivered to a queue bound to the app's
topic exchange.
Whatever the fault, every row must end up delivered, its table empty; messages
may only be duplicated within a burst whose publishing failed.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import quote

import psycopg
import pytest

from refapp import create_app
from refapp.models import db
from signalbus.conninfo import libpq_conninfo
from signalbus.triggers import check_signal_triggers
from tests.metrics_checks import get, probe, sample, scrape, served_url
from tests.processes import FLASK, OutputProcess
from tests.rabbitmq_broker import EXCHANGE, PASSWORD, QUEUE, Broker, Consumer
from tests.rabbitmq_node import RabbitNode
from tests.waiting import wait_until

PLACED = "order_placed_signal"
SHIPPED = "order_shipped_signal"
BURST = 1000  # the reference app's default SIGNALBUS_BURST_COUNT
PUBLISH_TIMEOUT = 10  # seconds: the sidecar's SIGNALBUS_RABBITMQ_TIMEOUT
ALARM_SAMPLES = 200  # of the sidecar's transactions, 0.1 s apart: a 20 s memory alarm

#: Log lines telling that a burst's publishing failed, so it may have been sent twice.
FAILED_ATTEMPT = re.compile(r"signals failed|publishing again on a new connection")


# ---------------------------------------------------------------------------------------
# The database


class Database:
    """The reference app's database: its signal tables, and inserting into them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connection = psycopg.connect(libpq_conninfo(url), autocommit=True)
        self._lock = threading.Lock()

    def insert(self, table: str, count: int) -> list[str]:
        """Insert *count* signal rows in one transaction; return their message ids."""
        query = (
            f"INSERT INTO {table} (payload) SELECT json_build_object('n', g) "
            "FROM generate_series(1, %s) g RETURNING id"
        )
        with self._lock:
            rows = self.connection.execute(query.encode(), (count,)).fetchall()
        return [f"{table}:{row_id}" for (row_id,) in rows]

    def pending(self, table: str = PLACED) -> int:
        with self._lock:
            row = self.connection.execute(f"SELECT count(*) FROM {table}".encode()).fetchone()
        assert row is not None
        return row[0]

    def transaction_ages(self) -> list[float]:
        """The ages, in seconds, of the transactions the sidecar's backends hold open."""
        query = (
            "SELECT extract(epoch FROM now() - xact_start) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND xact_start IS NOT NULL AND application_name <> 'signalbus-listener'"
        )
        with self._lock:
            return [float(age) for (age,) in self.connection.execute(query).fetchall()]

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """The reference app's tables and notification triggers in a fresh database."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        db.create_all()
        tables = db.signalbus.get_signal_tables()
        check_signal_triggers(db, tables, app.config["SIGNALBUS_CHANNEL"], install=True)
        db.engine.dispose()
    database = Database(database_url)
    yield database
    database.close()


# ---------------------------------------------------------------------------------------
# The sidecar


class Sidecar(OutputProcess):
    """A ``flask --app refapp signalbus ...`` process whose output is collected as it comes."""

    def __init__(self, database: Database, broker: Broker, *args: str, **settings: str) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": database.url,
            "SIGNALBUS_RABBITMQ_URL": broker.app_url,
            "SIGNALBUS_EXCHANGE": EXCHANGE,
            "SIGNALBUS_RABBITMQ_TIMEOUT": str(PUBLISH_TIMEOUT),
            **settings,
        }
        super().__init__([FLASK, "--app", "refapp", "signalbus", *args], env)

    def failed_attempts(self) -> int:
        return len(FAILED_ATTEMPT.findall(self.output))

    def wait(self, timeout: float = 60.0) -> int:
        return super().wait(timeout)


@pytest.fixture
def start_sidecar(database: Database, broker: Broker) -> Iterator[Callable[..., Sidecar]]:
    """Start ``flask signalbus <args>`` processes (keyword arguments: more environment
    variables); kill them after the test."""
    started: list[Sidecar] = []

    def start(*args: str, **settings: str) -> Sidecar:
        sidecar = Sidecar(database, broker, *args, **settings)
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in started:
        sidecar.kill()


@pytest.fixture
def listener(start_sidecar: Callable[..., Sidecar]) -> Sidecar:
    sidecar = start_sidecar("listen")
    sidecar.wait_for_output("listening")
    return sidecar


# ---------------------------------------------------------------------------------------
# Checks


def wait_delivered(
    consumer: Consumer, database: Database, ids: set[str], timeout: float = 60.0
) -> None:
    """Wait until every one of *ids* was delivered and no signal row is left."""

    def done() -> bool:
        return ids <= consumer.ids() and database.pending(PLACED) + database.pending(SHIPPED) == 0

    wait_until(
        done, timeout, lambda: f"{len(ids - consumer.ids())} of {len(ids)} messages to arrive"
    )


def duplicated_bursts(duplicates: set[str]) -> int:
    """Return how many bursts (runs of at most ``BURST`` consecutive ids) hold *duplicates*."""
    bursts, end = 0, None
    for table in (PLACED, SHIPPED):
        prefix = f"{table}:"
        numbers = sorted(int(i.removeprefix(prefix)) for i in duplicates if i.startswith(prefix))
        for number in numbers:
            if end is None or number > end:
                bursts, end = bursts + 1, number + BURST - 1
        end = None
    return bursts


def check_sent_once_or_failed(consumer: Consumer, sidecar: Sidecar, ids: set[str]) -> None:
    """Every id arrived, nothing else did, and duplicates come from failed bursts only."""
    assert consumer.ids() == ids
    duplicates = set(consumer.duplicates())
    assert duplicated_bursts(duplicates) <= sidecar.failed_attempts(), (
        f"{len(duplicates)} messages arrived twice, not from a failed burst:\n{sidecar.output}"
    )


def check_log(sidecar: Sidecar, *texts: str) -> None:
    output = sidecar.output
    for text in texts:
        assert text in output, f"{text!r} not in the output:\n{output}"
    assert PASSWORD not in output
    assert quote(PASSWORD, safe="") not in output


# ---------------------------------------------------------------------------------------
# Tests


def test_connections_closed_by_the_broker_mid_drain(
    database: Database, broker: Broker, consumer: Consumer, listener: Sidecar
) -> None:
    broker.declare("order.#")
    ids = set(database.insert(PLACED, 50_000))
    wait_until(lambda: len(consumer.ids()) >= BURST, 30, "the drain to start")

    broker.close_all_connections()
    assert database.pending() > 0, "the drain ended before the broker closed the connections"

    wait_delivered(consumer, database, ids)
    assert listener.process.poll() is None
    assert "CONNECTION_FORCED" in listener.output, listener.output
    check_sent_once_or_failed(consumer, listener, ids)
    check_log(listener)


def test_broker_stopped_and_started_while_rows_keep_coming(
    database: Database, broker: Broker, consumer: Consumer, listener: Sidecar
) -> None:
    node = broker.node
    broker.declare("order.#")
    ids = set(database.insert(PLACED, 10))
    wait_delivered(consumer, database, ids)
    try:
        node.ctl("stop_app")
        ids.update(database.insert(PLACED, 10))
        listener.wait_for_output("Sending OrderPlacedSignal signals failed")
        ids.update(database.insert(PLACED, 10))
        assert database.pending() >= 20  # the rows stay while the broker is down
        ids.update(database.insert(SHIPPED, 5))
        assert listener.process.poll() is None
    finally:
        node.ctl("start_app")
        node.ctl("await_startup")
    ids.update(database.insert(PLACED, 10))
    wait_delivered(consumer, database, ids, timeout=90)
    assert listener.process.poll() is None
    check_sent_once_or_failed(consumer, listener, ids)
    check_log(listener, "Sending OrderPlacedSignal signals failed")


def test_a_stopped_broker_counts_as_an_outage_and_readiness_follows_it(
    database: Database,
    broker: Broker,
    consumer: Consumer,
    start_sidecar: Callable[..., Sidecar],
) -> None:
    broker.declare("order.#")
    listener = start_sidecar("listen", "--metrics-port", "0", SIGNALBUS_READY_FAILING_SECONDS="2")
    base = served_url(listener)
    listener.wait_for_output("listening")
    ids = set(database.insert(PLACED, 10))
    wait_delivered(consumer, database, ids)
    signal = "OrderPlacedSignal"

    def failures(kind: str) -> float:
        return sample(scrape(base), "signalbus_send_failures_total", signal=signal, kind=kind) or 0

    node = broker.node
    try:
        node.ctl("stop_app")
        ids.update(database.insert(PLACED, 10))
        wait_until(lambda: failures("outage") >= 1, 30, "a failure of kind outage")
        wait_until(lambda: probe(base, "readyz")[0] == 503, 30, "/readyz failing")
        assert failures("row") == 0
        assert probe(base, "healthz")[0] == 200
    finally:
        node.ctl("start_app")
        node.ctl("await_startup")
    wait_delivered(consumer, database, ids, timeout=90)
    wait_until(lambda: probe(base, "readyz")[0] == 200, 30, "/readyz ready again")
    samples = scrape(base)
    assert sample(samples, "signalbus_sent_total", signal=signal) == 20
    assert sample(samples, "signalbus_delivery_seconds_count", signal=signal) == 20
    assert failures("row") == 0
    assert PASSWORD not in get(base + "metrics")[1] + get(base)[1]


def test_unroutable_messages_stay_until_a_queue_is_bound(
    database: Database, broker: Broker, consumer: Consumer, listener: Sidecar
) -> None:
    broker.declare("order.shipped")
    placed = set(database.insert(PLACED, 10))
    listener.wait_for_output("Sending OrderPlacedSignal signals failed")
    shipped = set(database.insert(SHIPPED, 5))
    wait_until(lambda: shipped <= consumer.ids(), 30, "the other signal to be sent")
    assert database.pending(PLACED) == 10

    broker.bind(QUEUE, "order.placed")
    wait_delivered(consumer, database, placed | shipped)
    assert listener.process.poll() is None
    check_sent_once_or_failed(consumer, listener, placed | shipped)
    check_log(listener, "MessageReturned", "NO_ROUTE")


def test_nacked_messages_stay_until_the_full_queue_is_purged(
    database: Database, broker: Broker, consumer: Consumer, listener: Sidecar
) -> None:
    broker.declare("order.#")
    broker.declare_full_queue("full", capacity=100)
    ids = set(database.insert(PLACED, 50))
    listener.wait_for_output("MessageNacked")
    assert database.pending() == 50

    broker.purge("full")
    wait_delivered(consumer, database, ids)
    assert listener.process.poll() is None
    check_sent_once_or_failed(consumer, listener, ids)
    check_log(listener, "Sending OrderPlacedSignal signals failed")


def test_flushmany_keeps_nacked_rows_and_exits_with_status_1(
    database: Database,
    broker: Broker,
    consumer: Consumer,
    start_sidecar: Callable[..., Sidecar],
) -> None:
    broker.declare("order.#")
    broker.declare_full_queue("full", capacity=100)
    ids = set(database.insert(PLACED, 50))

    failing = start_sidecar("flushmany")
    assert failing.wait() == 1
    check_log(failing, "Sending OrderPlacedSignal signals failed", "MessageNacked")
    assert database.pending() == 50

    broker.purge("full")
    succeeding = start_sidecar("flushmany")
    assert succeeding.wait() == 0, succeeding.output
    wait_delivered(consumer, database, ids)
    check_sent_once_or_failed(consumer, failing, ids)
    check_log(succeeding, "Sent 50 signals")


def test_a_memory_alarm_holds_no_transaction_open_and_loses_nothing(
    database: Database,
    broker: Broker,
    consumer: Consumer,
    listener: Sidecar,
    rabbit_node: RabbitNode,
) -> None:
    broker.declare("order.#")
    ids = set(database.insert(PLACED, 10))
    wait_delivered(consumer, database, ids)  # the sidecar's connection has published
    rabbit_node.ctl("set_vm_memory_high_watermark", "0.000001")
    try:
        ids.update(database.insert(PLACED, 20))
        listener.wait_for_output("blocks publishing")
        ages: list[float] = []
        for _ in range(ALARM_SAMPLES):  # the alarm's length: no condition ends it
            ages += database.transaction_ages()
            time.sleep(0.1)
        assert database.pending() >= 20  # the rows stay while the broker blocks
    finally:
        rabbit_node.ctl("set_vm_memory_high_watermark", "0.4")
    wait_delivered(consumer, database, ids)
    # A burst may wait for one publish attempt (a worker that had not published
    # yet does not know the broker blocks); none is started once it knows.
    assert max(ages, default=0.0) <= PUBLISH_TIMEOUT + 2, ages
    assert database.transaction_ages() == []
    check_sent_once_or_failed(consumer, listener, ids)
    check_log(listener, "blocks publishing")
