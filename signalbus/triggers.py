"""The notification triggers of signal tables: loading ``sql/``, installing, inspecting.

Every signal table gets one statement-level ``AFTER INSERT`` trigger named
``signalbus_notify``, calling the shared function ``signalbus_notify()``. The
function sends ``pg_notify(channel, table)``: the channel is the trigger's
argument (the app's ``SIGNALBUS_CHANNEL``), the payload the table's name,
schema-qualified unless the table is in ``public`` (the keys of
:meth:`signalbus.SignalBus.get_signal_tables`). A committing transaction thus
sends one notification per table, however many rows it inserted.

The DDL lives in the package's ``sql`` directory (``sql/`` in the source tree),
its single source. Identifiers and the channel are quoted with
:mod:`psycopg.sql`; statements are :class:`sqlalchemy.DDL` objects, so that
they run on any connection, alembic's included (also in ``--sql`` mode).

Functions taking a ``connection`` run in its transaction when one has begun
(commit it yourself), else in a transaction of their own that they commit.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine import Connection

from .config import DEFAULT_CHANNEL, check_channel

__all__ = [
    "TRIGGER_NAME",
    "TriggerStatus",
    "check_signal_triggers",
    "drop_statements",
    "drop_trigger",
    "install_statements",
    "install_trigger",
    "installed_triggers",
    "load_sql",
    "payload_name",
    "trigger_channels",
]

#: The name of the trigger on every signal table, and of the function it calls.
TRIGGER_NAME = "signalbus_notify"


@functools.cache
def load_sql(name: str) -> str:
    """Return the text of ``sql/<name>.sql``."""
    return resources.files("signalbus.sql").joinpath(f"{name}.sql").read_text(encoding="utf-8")


def payload_name(table_name: str, schema: str | None = None) -> str:
    """Return the notification payload of a table: ``schema.table`` unless in ``public``."""
    if schema in (None, "public"):
        return table_name
    return f"{schema}.{table_name}"


def install_statements(
    table_name: str, schema: str | None = None, channel: str = DEFAULT_CHANNEL
) -> list[sa.DDL]:
    """Return the statements (re)creating the function and the trigger of one table."""
    table = sql.Identifier(schema, table_name) if schema else sql.Identifier(table_name)
    literal = sql.Literal(check_channel(channel))
    return [
        _ddl("notify_function"),
        _ddl("drop_trigger", table=table),
        _ddl("create_trigger", table=table, channel=literal),
    ]


def drop_statements(table_name: str, schema: str | None = None) -> list[sa.DDL]:
    """Return the statement dropping the trigger of one table (if it has one)."""
    table = sql.Identifier(schema, table_name) if schema else sql.Identifier(table_name)
    return [_ddl("drop_trigger", table=table)]


def install_trigger(
    connection: Connection,
    table_name: str,
    schema: str | None = None,
    channel: str = DEFAULT_CHANNEL,
) -> None:
    """Install (or replace) the trigger of one table, and the shared function.

    Idempotent: the function is created or replaced, and the trigger dropped
    if it exists and created again, in one transaction.
    """
    with _transaction(connection):
        for statement in install_statements(table_name, schema, channel):
            connection.execute(statement)


def drop_trigger(connection: Connection, table_name: str, schema: str | None = None) -> None:
    """Drop the trigger of one table if it has one; drop the function once unused."""
    with _transaction(connection):
        for statement in drop_statements(table_name, schema):
            connection.execute(statement)
        drop_unused_function(connection)


def drop_unused_function(connection: Connection) -> None:
    """Drop the shared function unless some trigger still calls it."""
    with _transaction(connection):
        if not connection.execute(sa.text(load_sql("function_in_use"))).scalar_one():
            connection.execute(_ddl("drop_function"))


def trigger_channels(connection: Connection) -> dict[str, str]:
    """Map the payload name of every table having the trigger to the trigger's channel."""
    with _transaction(connection):
        rows = connection.execute(sa.text(load_sql("installed_triggers"))).all()
    return {
        payload_name(row.table_name, row.schema_name): _first_argument(row.arguments)
        for row in rows
    }


def installed_triggers(connection: Connection) -> set[str]:
    """Return the payload names (see :func:`payload_name`) of the tables having the trigger."""
    return set(trigger_channels(connection))


@dataclass(frozen=True)
class TriggerStatus:
    """The trigger of one signal model, as found in its database."""

    model: type
    table: str
    #: The channel of the installed trigger, ``None`` when there is none.
    channel: str | None
    expected_channel: str

    @property
    def ok(self) -> bool:
        """Whether the trigger is installed, on the expected channel."""
        return self.channel == self.expected_channel

    def describe(self) -> str:
        """Return ``installed``, ``missing`` or what is wrong, for people."""
        if self.ok:
            return "installed"
        if self.channel is None:
            return "missing"
        return f"on channel {self.channel!r}, expected {self.expected_channel!r}"


def check_signal_triggers(
    db: Any, models: Mapping[str, type], channel: str, *, install: bool = False
) -> list[TriggerStatus]:
    """Return the trigger status of each signal model (``{payload name: model}``).

    With *install*, first install every missing trigger (or the trigger on a
    wrong channel), so that the statuses returned are all ok. Each model's
    database is that of its ``bind_key``.
    """
    check_channel(channel)
    statuses = []
    for bind_key, tables in _group_by_bind(models).items():
        with db.engines[bind_key].connect() as connection:
            if install:
                _install_missing(connection, tables, channel)
            found = trigger_channels(connection)
        statuses.extend(
            TriggerStatus(model, name, found.get(name), channel) for name, model in tables.items()
        )
    return sorted(statuses, key=lambda status: status.table)


def _install_missing(connection: Connection, tables: Mapping[str, type], channel: str) -> None:
    found = trigger_channels(connection)
    with connection.begin():
        for name, model in tables.items():
            if found.get(name) != channel:
                table = model.__table__
                install_trigger(connection, table.name, table.schema, channel)


def _group_by_bind(models: Mapping[str, type]) -> dict[str | None, dict[str, type]]:
    groups: dict[str | None, dict[str, type]] = {}
    for name, model in models.items():
        groups.setdefault(model.__table__.metadata.info.get("bind_key"), {})[name] = model
    return groups


def _ddl(name: str, **arguments: sql.Composable) -> sa.DDL:
    text = sql.SQL(load_sql(name)).format(**arguments).as_string(None)
    # sa.DDL %-formats its statement: a literal "%" must be written "%%".
    return sa.DDL(text.replace("%", "%%"))


def _first_argument(arguments: bytes | memoryview) -> str:
    return bytes(arguments).split(b"\0", 1)[0].decode()


@contextmanager
def _transaction(connection: Connection) -> Iterator[None]:
    if connection.in_transaction():
        yield
    else:
        with connection.begin():
            yield
