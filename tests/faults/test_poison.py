"""One bad row never stops the rows behind it: real listeners, PostgreSQL and RabbitMQ.

``flask --app tests.poison_app signalbus listen`` runs as a subprocess on a fresh
database and a fresh virtual host of the session's own RabbitMQ node (the ``broker`` and
``consumer`` fixtures of :mod:`tests.rabbitmq_broker`: stopping it disturbs no other
broker). The app's send publishes each row's message through the signalbus Publisher,
unless it cannot build it: a payload that is not JSON, or one listed in the test's
reject file (see :mod:`tests.poison_app`). The consumer records the ``message_id``
(``<table>:<id>``) of every message delivered.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import poison_app
from tests.listener_processes import Database, Producer
from tests.processes import FLASK, OutputProcess
from tests.rabbitmq_broker import EXCHANGE, Broker, Consumer
from tests.waiting import wait_until

POISON, CLEAN = "poison_signal", "clean_signal"
BURST = poison_app.BURST
MAX_ATTEMPTS = 5  # SIGNALBUS_MAX_ATTEMPTS's default
#: A payload the send rejects while the reject file lists it.
REJECTED = '{"poison": true}'
#: A payload the send never can build a message of.
NOT_JSON = "{not json"
OUTAGE = 30.0  # seconds the broker is stopped


class PoisonProcess(OutputProcess):
    """``flask --app tests.poison_app signalbus <args>``, its output collected as it comes."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        super().__init__([FLASK, "--app", "tests.poison_app", "signalbus", *args], env)


@dataclass
class Relay:
    """The app's database, its processes, and the consumer of every message they publish."""

    database: Database
    consumer: Consumer
    start: Callable[..., PoisonProcess]
    #: The send rejects the payloads listed in this file.
    reject_file: Path
    #: The send notes each burst (or part) it rejects in this file.
    rejected_file: Path

    def insert(self, rows: int, bad: int, payload: str, clean: int = 0) -> set[str]:
        """Insert *rows* poison rows, row *bad* with *payload*, and *clean* clean rows,
        in one transaction; return the message ids of the good ones."""
        self.database.execute(
            f"WITH clean AS (INSERT INTO {CLEAN} (id) SELECT generate_series(1, %s::bigint))"
            f" INSERT INTO {POISON} (id, payload) SELECT g, CASE WHEN g = %s THEN %s ELSE '{{}}'"
            " END FROM generate_series(1, %s::bigint) g",
            (clean, bad, payload, rows),
        )
        poison = {f"{POISON}:{i}" for i in range(1, rows + 1) if i != bad}
        return poison | {f"{CLEAN}:{i}" for i in range(1, clean + 1)}

    def pending(self) -> int:
        return len(self.database.pending(POISON)) + len(self.database.pending(CLEAN))

    def quarantine(self) -> list[tuple]:
        """Every record of the quarantine: table, key, attempts, last error, quarantined."""
        return self.database.execute(
            "SELECT signal_table, row_key, attempts, last_error, quarantined_at IS NOT NULL"
            " FROM signalbus_quarantine ORDER BY id"
        )

    def attempts(self) -> int:
        """The attempts counted of the one row that has a quarantine record (0: none has)."""
        rows = self.database.execute("SELECT attempts FROM signalbus_quarantine")
        return rows[0][0] if rows else 0

    def rejected(self, process: OutputProcess) -> list[int]:
        """The sizes of the bursts (and parts) of poison rows *process* could not send."""
        path = self.rejected_file
        lines = path.read_text().splitlines() if path.exists() else []
        pid = str(process.process.pid)
        return [int(f[1]) for f in map(str.split, lines) if f[0] == POISON and f[2] == pid]

    def wait_delivered(self, ids: set[str], timeout: float = 60.0) -> None:
        """Wait until every one of *ids* was delivered and no signal row is left."""
        wait_until(
            lambda: ids <= self.consumer.ids() and self.pending() == 0,
            timeout,
            lambda: (
                f"{len(ids - self.consumer.ids())} of {len(ids)} messages, {self.pending()} "
                "rows left"
            ),
        )

    def wait_quarantined(self, bad: int, reason: str) -> None:
        """Wait until poison row *bad*, and only it, is in quarantine after every attempt."""
        wait_until(
            lambda: self.quarantine() == quarantined(bad, reason),
            30,
            lambda: f"row {bad} in quarantine: {self.quarantine()}",
        )


def quarantined(bad: int, reason: str) -> list[tuple]:
    """The records of a quarantine holding poison row *bad* only, after every attempt."""
    error = f"ValueError: cannot build the message of {POISON}:{bad}: the payload {reason}"
    return [(POISON, {"id": bad}, MAX_ATTEMPTS, error, True)]


@pytest.fixture
def database(database_url: str, tmp_path: Path) -> Iterator[Database]:
    """The app's signal tables, the quarantine and the triggers, in a fresh database."""
    poison_app.create_schema(poison_app.create_app(database_url, {"SIGNALBUS_RABBITMQ_URL": ""}))
    database = Database(database_url, tmp_path / "sent")  # nothing writes it here
    yield database
    database.connection.close()


@pytest.fixture
def relay(
    database: Database, broker: Broker, consumer: Consumer, tmp_path: Path
) -> Iterator[Relay]:
    """The app relaying to the test's virtual host; its processes are killed after the test."""
    broker.declare("#")  # the consumer's queue gets every message of the app's exchange
    reject_file, rejected_file = tmp_path / "reject", tmp_path / "rejected"
    env = {
        **os.environ,
        "POISON_DATABASE_URL": database.url,
        "POISON_REJECT_FILE": str(reject_file),
        "POISON_REJECTED_FILE": str(rejected_file),
        "SIGNALBUS_RABBITMQ_URL": broker.app_url,
        "SIGNALBUS_EXCHANGE": EXCHANGE,
        "SIGNALBUS_RABBITMQ_TIMEOUT": "10",
    }
    started: list[PoisonProcess] = []

    def start(*args: str, **settings: str) -> PoisonProcess:
        """Start ``flask signalbus <args>`` (keyword arguments: more environment
        variables); a listener, once it listens."""
        process = PoisonProcess({**env, **settings}, *args)
        started.append(process)
        if args[:1] == ("listen",):
            process.wait_for_output("listening")
        return process

    yield Relay(database, consumer, start, reject_file, rejected_file)
    for process in started:
        process.kill()


# ---------------------------------------------------------------------------------------
# Tests


def test_one_bad_row_among_10000_goes_to_quarantine_and_back_once_its_cause_is_gone(
    relay: Relay,
) -> None:
    relay.reject_file.write_text(REJECTED + "\n")
    bad = 4321
    good = relay.insert(10_000, bad, REJECTED, clean=3_000)
    listener = relay.start("listen")

    relay.wait_delivered(good)
    relay.wait_quarantined(bad, "is rejected")
    assert relay.consumer.ids() == good
    assert relay.consumer.duplicates() == {}
    assert relay.rejected(listener).count(1) == MAX_ATTEMPTS  # tried alone 5 times
    listener.wait_for_output(
        f"Quarantined the PoisonSignal row id={bad} after {MAX_ATTEMPTS} attempts"
    )

    relay.reject_file.unlink()  # the cause goes away: the row goes out as it was
    requeue = relay.start("requeue", "--all")
    assert requeue.wait(60) == 0, requeue.output
    assert "Requeued 1 row." in requeue.output
    relay.wait_delivered(good | {f"{POISON}:{bad}"}, timeout=30)
    assert relay.consumer.duplicates() == {}
    assert relay.quarantine() == []
    assert listener.process.poll() is None


def test_a_broker_stopped_for_30_s_while_rows_flow_quarantines_nothing(
    relay: Relay, broker: Broker
) -> None:
    listener = relay.start("listen")
    consumer, node = relay.consumer, broker.node
    with Producer(relay.database, table=POISON) as producer:
        wait_until(lambda: len(consumer.ids()) >= 100, 30, "rows to flow")
        try:
            node.ctl("stop_app")
            stopped = time.monotonic()
            listener.wait_for_output("the broker is unavailable", timeout=OUTAGE)
            time.sleep(max(0.0, OUTAGE - (time.monotonic() - stopped)))  # the outage itself
            assert relay.database.pending(POISON), "no row kept while the broker was down"
        finally:
            node.ctl("start_app")
            node.ctl("await_startup")
        delivered = len(consumer.ids())
        wait_until(lambda: len(consumer.ids()) >= delivered + 100, 60, "rows to flow again")
    ids = {f"{POISON}:{i}" for i in producer.inserted}
    relay.wait_delivered(ids, timeout=90)
    assert consumer.ids() == ids
    assert relay.quarantine() == []  # no row quarantined, no attempt counted
    assert "Quarantined" not in listener.output
    assert listener.process.poll() is None


def test_a_listener_killed_mid_isolation_loses_nothing(relay: Relay) -> None:
    bad = 2 * BURST  # the last row of the second burst: the parts before it go out first
    good = relay.insert(5 * BURST, bad, NOT_JSON, clean=BURST)
    first = relay.start("listen", POISON_SLOW_SECONDS="1")
    wait_until(lambda: any(n < BURST for n in relay.rejected(first)), 30,
               lambda: f"a part of the burst to fail: {relay.rejected(first)}")  # fmt: skip
    first.kill()  # SIGKILL, while the part's send takes its second
    assert relay.rejected(first) == [BURST, BURST // 2]  # the burst, then its second half
    half = f"{POISON}:{bad - BURST // 2}"  # the last row of its first half, which went out
    wait_until(lambda: half in relay.consumer.ids(), 10, "the burst's first half to arrive")

    second = relay.start("listen")
    relay.wait_delivered(good)
    relay.wait_quarantined(bad, "is not JSON")
    assert relay.consumer.ids() == good
    assert relay.rejected(second).count(1) == MAX_ATTEMPTS


def test_a_listener_killed_while_retrying_a_bad_row_alone_loses_nothing(relay: Relay) -> None:
    bad = 2 * BURST
    good = relay.insert(5 * BURST, bad, NOT_JSON)
    first = relay.start("listen", POISON_SLOW_SECONDS="0.5")
    wait_until(lambda: relay.attempts() >= 2, 60, "two attempts of the bad row alone")
    first.kill()  # SIGKILL, while the third attempt's send takes its half second
    assert relay.attempts() == 2

    second = relay.start("listen")
    done = quarantined(bad, "is not JSON")

    def settled() -> bool:  # done, or backing off: the bad row is no suspect any more
        return (good <= relay.consumer.ids() and relay.quarantine() == done) or (
            second.output.count("Sending PoisonSignal signals failed") >= 2
        )

    wait_until(settled, 60, lambda: f"{len(good - relay.consumer.ids())} messages to arrive")
    assert good <= relay.consumer.ids(), f"{len(good - relay.consumer.ids())} rows not delivered"
    assert relay.quarantine() == done
