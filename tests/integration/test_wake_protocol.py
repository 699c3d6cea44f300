"""The wake protocol of the trigger function (sql/notify_function.sql), on real PostgreSQL.

A listener session takes the table's ``awake`` lock (sql/wake_up.sql); writers
then skip the NOTIFY and register under ``skipped`` until they end; the
listener gives ``awake`` back (sql/fall_asleep.sql) and asks whether writers
that skipped still run (sql/skipped_writers.sql).
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from signalbus.conninfo import libpq_conninfo
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
