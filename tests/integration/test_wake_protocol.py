"""The wake protocol of the trigger function (sql/notify_function.sql), on real PostgreSQL.

A listener session takes the table's ``awake`` lock (sql/wake_up.sql); writers
then skip the NOTIFY and register under ``skipped`` until they end; the
listener gives ``awake`` back (sql/fall_asleep.sql) and asks whether writers
that skipped still run (sql/skipped_writers.sql).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.engine import Connection, Engine

from signalbus import SignalBusMixin
from signalbus.awake import Awake
from signalbus.connections import OwnedConnections
from signalbus.conninfo import libpq_conninfo
from signalbus.flush import FlushResult
from signalbus.triggers import install_trigger, load_sql

TABLE = "wake_signal"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE TABLE {TABLE} (id bigserial PRIMARY KEY)")
        install_trigger(connection, TABLE)
    yield engine
    engine.dispose()


@pytest.fixture
def notifications(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(libpq_conninfo(database_url), autocommit=True) as connection:
        connection.execute("LISTEN signalbus")
        yield connection


@pytest.fixture
def listener(engine: Engine) -> Iterator[Connection]:
    """A listener's session (autocommit: its advisory locks are session locks)."""
    with engine.connect() as connection:
        yield connection


def protocol(connection: Connection, name: str) -> bool | None:
    return connection.execute(sa.text(load_sql(name)), {"table": TABLE}).scalar()


def insert(connection: Connection) -> None:
    connection.exec_driver_sql(f"INSERT INTO {TABLE} DEFAULT VALUES")


def notified(notifications: psycopg.Connection, engine: Engine) -> int:
    """How many notifications came before a sentinel sent now (they arrive in commit order)."""
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT pg_notify('signalbus', '--sentinel--')")
    for count, notify in enumerate(notifications.notifies(timeout=10)):
        if notify.payload == "--sentinel--":
            return count
    raise AssertionError("no sentinel within 10 s")


def test_writers_notify_while_no_listener_is_awake(
    engine: Engine, notifications: psycopg.Connection
) -> None:
    with engine.connect() as writer:
        insert(writer)
        insert(writer)
    assert notified(notifications, engine) == 2


def test_writers_skip_while_a_listener_is_awake_and_notify_once_it_sleeps(
    engine: Engine, notifications: psycopg.Connection, listener: Connection
) -> None:
    assert protocol(listener, "wake_up") is True
    with engine.connect() as writer:
        insert(writer)
        insert(writer)
    assert notified(notifications, engine) == 0
    assert protocol(listener, "fall_asleep") is True
    assert protocol(listener, "skipped_writers") is False
    with engine.connect() as writer:
        insert(writer)
    assert notified(notifications, engine) == 1


def test_a_writer_that_skipped_is_seen_until_its_transaction_ends(
    engine: Engine, notifications: psycopg.Connection, listener: Connection
) -> None:
    protocol(listener, "wake_up")
    with engine.connect().execution_options(isolation_level="READ COMMITTED") as writer:
        writer.begin()
        insert(writer)
        protocol(listener, "fall_asleep")
        assert protocol(listener, "skipped_writers") is True
        assert protocol(listener, "skipped_writers") is True
        writer.commit()
    assert protocol(listener, "skipped_writers") is False
    assert notified(notifications, engine) == 0  # the listener's last flush finds the row


def test_only_one_listener_is_awake_for_a_table(engine: Engine, listener: Connection) -> None:
    with engine.connect() as other:
        assert protocol(listener, "wake_up") is True
        assert protocol(other, "wake_up") is False
        protocol(listener, "fall_asleep")
        assert protocol(other, "wake_up") is True


def test_a_listener_that_dies_awake_silences_nobody(
    engine: Engine, notifications: psycopg.Connection
) -> None:
    doomed = engine.connect()
    protocol(doomed, "wake_up")
    doomed.invalidate()  # its session ends, as with kill -9
    with engine.connect() as writer:
        insert(writer)
    assert notified(notifications, engine) == 1


def test_writers_never_wait_for_the_protocols_locks(
    engine: Engine, notifications: psycopg.Connection, listener: Connection
) -> None:
    skipped = f"(1935832436::bigint << 32) | '{TABLE}'::regclass::oid::bigint"
    awake = f"(1935832435::bigint << 32) | '{TABLE}'::regclass::oid::bigint"
    # Both locks held exclusively, as no listener ever holds them together: a writer
    # that waited for either would fail on its lock_timeout.
    listener.exec_driver_sql(f"SELECT pg_advisory_lock({skipped}), pg_advisory_lock({awake})")
    with engine.connect() as writer:
        writer.exec_driver_sql("SET lock_timeout = '100ms'")
        insert(writer)
    assert notified(notifications, engine) == 1  # it could not register: it notified


# --- the listener's side: signalbus.awake through the flush --------------------------------


class ProtocolDB(SignalBusMixin, SQLAlchemy):
    pass


class Flushing:
    """Flushes of a signal model of the table, as a listener's worker runs them."""

    def __init__(self, flush: Callable[[], FlushResult]) -> None:
        self.flush = flush
        self.sent: list[int] = []
        #: What to do when sending a row, by its id (in the flush, as it runs).
        self.on_send: dict[int, Callable[[], object]] = {}

    def send(self, row_id: int) -> None:
        self.on_send.pop(row_id, lambda: None)()
        self.sent.append(row_id)


@pytest.fixture
def flushing(database_url: str, engine: Engine) -> Iterator[Flushing]:
    db = ProtocolDB()
    flushing: Flushing

    class WakeSignal(db.Model):  # type: ignore[name-defined, misc]
        __tablename__ = TABLE
        signalbus_burst_count = 100
        id = db.Column(db.BigInteger, primary_key=True)

        @classmethod
        def send_signalbus_message(cls, obj: Any) -> None:
            flushing.send(obj.id)

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    db.init_app(app)
    awake = Awake(None, TABLE)
    with app.app_context():
        connections = OwnedConnections(db.engine)
        flusher = db.signalbus.flusher(WakeSignal)
        flushing = Flushing(lambda: flusher.flush(connections, awake=awake))
        yield flushing
        connections.close()
        db.engine.dispose()


def test_a_look_owed_is_kept_even_by_a_flush_that_cannot_wake(
    engine: Engine, flushing: Flushing, listener: Connection
) -> None:
    def commit_rows(*ids: int) -> None:
        with engine.connect() as writer:
            writer.exec_driver_sql(f"INSERT INTO {TABLE} (id) SELECT unnest(ARRAY{list(ids)})")

    commit_rows(1, 2, 3, 4)
    skipper = engine.connect().execution_options(isolation_level="READ COMMITTED")
    skipper.begin()
    # Four rows: once they are sent the flush takes the awake lock and goes on; row 5
    # comes meanwhile, and while it is sent a writer skips its notification, and
    # still runs when the flush falls asleep: a look is owed.
    flushing.on_send[1] = lambda: commit_rows(5)
    flushing.on_send[5] = lambda: skipper.exec_driver_sql(f"INSERT INTO {TABLE} VALUES (6)")
    assert flushing.flush().recheck_after is not None
    assert flushing.sent == [1, 2, 3, 4, 5]
    # Four rows again, but the lock cannot be taken (a writer holds it shared for an
    # instant): the flush must still end on a look, not on its last burst.
    commit_rows(7, 8, 9, 10)
    awake_key = f"(1935832435::bigint << 32) | '{TABLE}'::regclass::oid::bigint"
    listener.exec_driver_sql(f"SELECT pg_advisory_lock_shared({awake_key})")
    assert flushing.flush().recheck_after is not None
    listener.exec_driver_sql(f"SELECT pg_advisory_unlock_shared({awake_key})")
    assert flushing.sent == [1, 2, 3, 4, 5, 7, 8, 9, 10]
    skipper.commit()  # the row of the writer that skipped: found by the look
    skipper.close()
    assert flushing.flush().recheck_after is None
    assert flushing.sent == [1, 2, 3, 4, 5, 7, 8, 9, 10, 6]
