"""The notification triggers on real PostgreSQL, and ``flask signalbus triggers``."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.engine import Engine

from signalbus.conninfo import libpq_conninfo
from signalbus.triggers import (
    TRIGGER_NAME,
    drop_trigger,
    function_is_current,
    install_statements,
    install_trigger,
    installed_triggers,
    load_sql,
    trigger_channels,
)
from tests.trigger_checks import function_exists, install_classic_function

SENTINEL = "--sentinel--"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = sa.create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def listener(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(libpq_conninfo(database_url), autocommit=True) as connection:
        yield connection


def create_tables(engine: Engine, *names: str, schema: str | None = None) -> None:
    with engine.begin() as connection:
        if schema:
            connection.execute(sa.schema.CreateSchema(schema, if_not_exists=True))
        for name in names:
            connection.execute(sa.schema.CreateTable(make_table(name, schema)))


def make_table(name: str, schema: str | None = None) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("value", sa.Integer),
        schema=schema,
    )


def install(engine: Engine, name: str, schema: str | None = None, **kwargs: str) -> None:
    with engine.begin() as connection:
        install_trigger(connection, name, schema, **kwargs)


def listen(listener: psycopg.Connection, *channels: str) -> None:
    for channel in channels:
        listener.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel)))


def received(listener: psycopg.Connection, engine: Engine, channel: str) -> list[tuple[str, str]]:
    """Return the notifications (channel, payload) sent before a sentinel sent now.

    Notifications arrive in commit order: once the sentinel is in, every
    notification of the transactions committed before it is too.
    """
    with engine.begin() as connection:
        connection.execute(sa.select(sa.func.pg_notify(channel, SENTINEL)))
    notifications = []
    for notify in listener.notifies(timeout=10):
        if (notify.channel, notify.payload) == (channel, SENTINEL):
            return notifications
        notifications.append((notify.channel, notify.payload))
    raise AssertionError(f"No sentinel within 10 seconds; received {notifications}")


def trigger_count(engine: Engine) -> int:
    with engine.connect() as connection:
        query = sa.text("SELECT count(*) FROM pg_trigger WHERE tgname = :name")
        return connection.execute(query, {"name": TRIGGER_NAME}).scalar_one()


def test_load_sql_reads_the_sql_directory() -> None:
    assert "CREATE OR REPLACE FUNCTION signalbus_notify()" in load_sql("notify_function")
    assert "FOR EACH STATEMENT" in load_sql("create_trigger")
    with pytest.raises(FileNotFoundError):
        load_sql("nope")


def test_install_creates_function_and_trigger(engine: Engine) -> None:
    create_tables(engine, "a_signal", "b_signal")
    with engine.connect() as connection:
        assert installed_triggers(connection) == set()
    install(engine, "a_signal")
    assert function_exists(engine)
    with engine.connect() as connection:
        assert installed_triggers(connection) == {"a_signal"}
        assert trigger_channels(connection) == {"a_signal": "signalbus"}


def test_install_is_idempotent_and_replaces_the_channel(engine: Engine) -> None:
    create_tables(engine, "a_signal")
    install(engine, "a_signal")
    install(engine, "a_signal")
    assert trigger_count(engine) == 1
    install(engine, "a_signal", channel="elsewhere")
    assert trigger_count(engine) == 1
    with engine.connect() as connection:
        assert trigger_channels(connection) == {"a_signal": "elsewhere"}


def test_install_joins_the_callers_transaction(engine: Engine) -> None:
    create_tables(engine, "a_signal")
    with engine.connect() as connection:
        connection.begin()
        install_trigger(connection, "a_signal")
        connection.rollback()
    assert trigger_count(engine) == 0 and not function_exists(engine)


def test_drop_removes_the_function_with_the_last_trigger(engine: Engine) -> None:
    create_tables(engine, "a_signal", "b_signal")
    install(engine, "a_signal")
    install(engine, "b_signal")
    with engine.begin() as connection:
        drop_trigger(connection, "a_signal")
    assert function_exists(engine)
    with engine.begin() as connection:
        assert installed_triggers(connection) == {"b_signal"}
        drop_trigger(connection, "b_signal")
        drop_trigger(connection, "b_signal")  # no trigger: no error
    assert trigger_count(engine) == 0 and not function_exists(engine)


@pytest.mark.parametrize("channel", ["", "x" * 64, "é" * 32])
def test_bad_channel_is_rejected_at_install(channel: str) -> None:
    with pytest.raises(ValueError, match="channel"):
        install_statements("a_signal", channel=channel)


def test_one_notification_per_table_per_transaction(
    engine: Engine, listener: psycopg.Connection
) -> None:
    create_tables(engine, "a_signal", "b_signal", "plain")
    install(engine, "a_signal")
    install(engine, "b_signal")
    listen(listener, "signalbus")
    with engine.begin() as connection:
        for table in ("a_signal", "b_signal", "plain"):
            for _ in range(2):  # 100 rows per table, in two statements
                connection.execute(
                    sa.text(f"INSERT INTO {table} (value) SELECT g FROM generate_series(1, 50) g")
                )
    notifications = received(listener, engine, "signalbus")
    assert sorted(notifications) == [("signalbus", "a_signal"), ("signalbus", "b_signal")]


def test_each_transaction_notifies_and_a_rollback_does_not(
    engine: Engine, listener: psycopg.Connection
) -> None:
    create_tables(engine, "a_signal")
    install(engine, "a_signal")
    listen(listener, "signalbus")
    for _ in range(2):
        with engine.begin() as connection:
            connection.execute(sa.text("INSERT INTO a_signal (value) VALUES (1)"))
    with engine.connect() as connection:
        connection.execute(sa.text("INSERT INTO a_signal (value) VALUES (2)"))
        connection.rollback()
    assert received(listener, engine, "signalbus") == [("signalbus", "a_signal")] * 2


@pytest.mark.parametrize(
    ("schema", "table", "payload"),
    [
        ("sales", "order_signal", "sales.order_signal"),
        ("public", "order_signal", "order_signal"),
        ('we"ird %s', "Odd:%name", 'we"ird %s.Odd:%name'),
    ],
)
def test_payload_is_the_table_name_schema_qualified_outside_public(
    engine: Engine, listener: psycopg.Connection, schema: str, table: str, payload: str
) -> None:
    create_tables(engine, table, schema=schema)
    install(engine, table, schema)
    listen(listener, "signalbus")
    with engine.begin() as connection:
        connection.execute(sa.insert(make_table(table, schema)).values(value=1))
    assert received(listener, engine, "signalbus") == [("signalbus", payload)]
    with engine.connect() as connection:
        assert installed_triggers(connection) == {payload}


def test_the_channel_is_the_triggers_argument(engine: Engine, listener: psycopg.Connection) -> None:
    create_tables(engine, "a_signal", "b_signal")
    install(engine, "a_signal", channel="Other Channel")
    install(engine, "b_signal")
    listen(listener, "signalbus", "Other Channel")
    with engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO a_signal (value) VALUES (1)"))
        connection.execute(sa.text("INSERT INTO b_signal (value) VALUES (1)"))
    assert sorted(received(listener, engine, "signalbus")) == [
        ("Other Channel", "a_signal"),
        ("signalbus", "b_signal"),
    ]


# --- flask signalbus triggers ----------------------------------------------------------


def run_triggers_command(app: Flask, *options: str) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=["signalbus", "triggers", *options])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result.exit_code, result.output


def test_triggers_command_reports_missing_triggers(app: Flask) -> None:
    code, output = run_triggers_command(app)
    assert code == 1
    assert output.splitlines() == [
        "batch_signal (BatchSignal): trigger missing",
        "composite_signal (CompositeSignal): trigger missing",
        "single_signal (SingleSignal): trigger missing",
    ]


def test_triggers_command_tells_a_missing_table_from_a_missing_trigger(
    app: Flask, engine: Engine
) -> None:
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE composite_signal")
    missing_table = "composite_signal (CompositeSignal): table missing (hint: flask db upgrade)"
    code, output = run_triggers_command(app)
    assert code == 1
    assert missing_table in output and "single_signal (SingleSignal): trigger missing" in output
    code, output = run_triggers_command(app, "--install")
    assert code == 1
    assert missing_table in output and "single_signal (SingleSignal): created" in output


def test_triggers_command_installs_idempotently(app: Flask, engine: Engine) -> None:
    install(engine, "batch_signal")
    code, output = run_triggers_command(app, "--install")
    assert code == 0
    assert output.splitlines() == [
        "batch_signal (BatchSignal): already there",
        "composite_signal (CompositeSignal): created",
        "single_signal (SingleSignal): created",
    ]
    code, output = run_triggers_command(app, "--install")
    assert code == 0 and output.count(": already there") == 3
    code, output = run_triggers_command(app)
    assert code == 0 and output.count(": installed") == 3
    assert trigger_count(engine) == 3
    with engine.connect() as connection:
        assert installed_triggers(connection) == set(
            app.extensions["signalbus"].get_signal_tables()
        )


def test_triggers_command_checks_the_channel(app: Flask, engine: Engine) -> None:
    run_triggers_command(app, "--install")
    app.config["SIGNALBUS_CHANNEL"] = "other"
    code, output = run_triggers_command(app)
    assert code == 1
    assert "single_signal (SingleSignal): on channel 'signalbus', expected 'other'" in output
    code, output = run_triggers_command(app, "--install")
    assert code == 0
    assert "single_signal (SingleSignal): replaced (was on channel 'signalbus')" in output
    with engine.connect() as connection:
        assert set(trigger_channels(connection).values()) == {"other"}


def test_triggers_command_reports_bad_channel_without_traceback(app: Flask) -> None:
    app.config["SIGNALBUS_CHANNEL"] = "x" * 100
    code, output = run_triggers_command(app, "--install")
    assert code == 1
    assert output.startswith("Error: Bad configuration: SIGNALBUS_CHANNEL 'xxx")
    assert "Traceback" not in output


def test_an_outdated_function_is_reported_and_upgraded(app: Flask, engine: Engine) -> None:
    run_triggers_command(app, "--install")
    install_classic_function(engine)
    outdated = "function outdated (hint: flask db upgrade, or --install)"
    code, output = run_triggers_command(app)
    assert code == 1
    assert output.splitlines() == [
        f"batch_signal (BatchSignal): {outdated}",
        f"composite_signal (CompositeSignal): {outdated}",
        f"single_signal (SingleSignal): {outdated}",
    ]
    code, output = run_triggers_command(app, "--install")
    assert code == 0 and output.count(": function upgraded") == 3
    code, output = run_triggers_command(app)
    assert code == 0 and output.count(": installed") == 3
    with engine.connect() as connection:
        assert function_is_current(connection) is True
