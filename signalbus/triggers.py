"""The notification triggers of signal tables: loading ``sql/``, installing, inspecting.

Every signal table gets one statement-level ``AFTER INSERT`` trigger named
``signalbus_notify``, calling the shared function ``signalbus_notify()``. The
function sends ``pg_notify(channel, table)``: the channel is the trigger's
argument (the app's ``SIGNALBUS_CHANNEL``), the payload the table's name,
schema-qualified unless the table is in ``public`` (the keys of
:meth:`signalbus.SignalBus.get_signal_tables`). A committing transaction thus
sends one notification per table, however many rows it inserted, and none
while a listener is awake for the table: the wake protocol, described at the
top of ``sql/notify_function.sql``.

A database whose function is not the one of ``sql/notify_function.sql`` (an
older signalbus installed it) has an *outdated* function: installing any
trigger replaces it, as does the migration calling
``op.replace_signal_function()``.

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
from typing import TYPE_CHECKING

import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine import Connection

from .config import DEFAULT_CHANNEL, check_channel
from .model import SignalModel, signal_table
from .quarantine import quarantine_table

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

__all__ = [
    "TRIGGER_NAME",
    "TriggerStatus",
    "check_signal_triggers",
    "drop_statements",
    "drop_trigger",
    "function_is_current",
    "install_statements",
    "install_trigger",
    "installed_triggers",
    "load_sql",
    "payload_name",
    "quoted_name",
    "trigger_channels",
]

#: The name of the trigger on every signal table, and of the function it calls.
TRIGGER_NAME = "signalbus_notify"


@functools.cache
def load_sql(name: str) -> str:
    """Return the text of ``sql/<name>.sql``."""
    return resources.files("signalbus.sql").joinpath(f"{name}.sql").read_text(encoding="utf-8")


def quoted_name(table_name: str, schema: str | None = None) -> str:
    """Return the table's name quoted for SQL (``"schema"."table"``), e.g. for ``to_regclass``."""
    names = [name for name in (schema, table_name) if name is not None]
    return ".".join('"' + name.replace('"', '""') + '"' for name in names)


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


def function_statements() -> list[sa.DDL]:
    """Return the statement creating or replacing the shared function."""
    return [_ddl("notify_function")]


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


def function_is_current(connection: Connection) -> bool | None:
    """Tell whether the shared function is the current one; ``None`` when there is none."""
    with _transaction(connection):
        source = connection.execute(sa.text(load_sql("function_source"))).scalar()
    return None if source is None else source == _current_function_source()


@functools.cache
def _current_function_source() -> str:
    _, body, _ = load_sql("notify_function").split("$function$")
    return body


def installed_triggers(connection: Connection) -> set[str]:
    """Return the payload names (see :func:`payload_name`) of the tables having the trigger."""
    return set(trigger_channels(connection))


@dataclass(frozen=True)
class TriggerStatus:
    """The trigger of one signal model, as found in its database."""

    model: SignalModel
    table: str
    #: Whether the model's table exists.
    table_exists: bool
    #: The channel of the installed trigger, ``None`` when there is none.
    channel: str | None
    expected_channel: str
    #: What installing did (``"created"``, ``"already there"``, ``"replaced …"``);
    #: ``None`` when only checking, or when the table is missing.
    installed: str | None = None
    #: Whether the shared function the trigger calls is the current one.
    function_current: bool = True

    @property
    def ok(self) -> bool:
        """Whether the trigger is installed, on the expected channel, calling the current
        function."""
        return self.table_exists and self.channel == self.expected_channel and self.function_current

    def describe(self) -> str:
        """Return the state of the trigger, or what installing did, for people."""
        if not self.table_exists:
            return "table missing (hint: flask db upgrade)"
        if self.installed:
            return self.installed
        if self.channel is None:
            return "trigger missing"
        if self.channel != self.expected_channel:
            return f"on channel {self.channel!r}, expected {self.expected_channel!r}"
        if not self.function_current:
            return "function outdated (hint: flask db upgrade, or --install)"
        return "installed"

    def describe_trigger(self) -> str:
        """Return :meth:`describe` as a phrase naming what it is about: ``"trigger
        installed"``, ``"trigger missing"``, ``"function outdated …"``, ``"table missing …"``."""
        described = self.describe()
        return described if described.startswith(_SUBJECTS) else f"trigger {described}"


#: The words :meth:`TriggerStatus.describe` starts with when it names its subject.
_SUBJECTS = ("trigger ", "function ", "table ")


def check_signal_triggers(
    db: SQLAlchemy, models: Mapping[str, SignalModel], channel: str, *, install: bool = False
) -> list[TriggerStatus]:
    """Return the trigger status of each signal model (``{payload name: model}``).

    With *install*, first install every missing trigger (or the trigger on a
    wrong channel) of the tables that exist, so that their statuses are ok.
    Each model's database is that of its ``bind_key``.
    """
    check_channel(channel)
    statuses = []
    for bind_key, tables in _group_by_bind(models).items():
        with db.engines[bind_key].connect() as connection:
            statuses += _statuses(connection, tables, channel, install)
    return sorted(statuses, key=lambda status: status.table)


def _statuses(
    connection: Connection, tables: Mapping[str, SignalModel], channel: str, install: bool
) -> list[TriggerStatus]:
    done: dict[str, str] = {}
    with connection.begin():
        inspector = sa.inspect(connection)
        existing = {
            name
            for name, model in tables.items()
            if inspector.has_table((table := signal_table(model)).name, schema=table.schema)
        }
        found = trigger_channels(connection)
        current = function_is_current(connection) is not False
        if install:
            quarantine_table(sa.MetaData()).create(connection, checkfirst=True)
            upgraded = not current and bool(existing)
            for statement in function_statements() if upgraded else []:
                connection.execute(statement)
            for name in existing:
                done[name] = _install(connection, tables[name], found.get(name), channel, upgraded)
            found = trigger_channels(connection)
            current = True
    return [
        TriggerStatus(
            model, name, name in existing, found.get(name), channel, done.get(name), current
        )
        for name, model in tables.items()
    ]


def _install(
    connection: Connection, model: SignalModel, found: str | None, channel: str, upgraded: bool
) -> str:
    """Install the trigger of *model* unless it is on *channel*; say what was done."""
    if found == channel:
        return "function upgraded" if upgraded else "already there"
    table = signal_table(model)
    install_trigger(connection, table.name, table.schema, channel)
    return "created" if found is None else f"replaced (was on channel {found!r})"


def _group_by_bind(
    models: Mapping[str, SignalModel],
) -> dict[str | None, dict[str, SignalModel]]:
    groups: dict[str | None, dict[str, SignalModel]] = {}
    for name, model in models.items():
        groups.setdefault(signal_table(model).metadata.info.get("bind_key"), {})[name] = model
    return groups


def _ddl(name: str, **arguments: sql.Composable) -> sa.DDL:
    text = sql.SQL(load_sql(name)).format(**arguments).as_string(None)
    # sa.DDL %-formats its statement: a literal "%" must be written "%%".
    return sa.DDL(text.replace("%", "%%"))  # type: ignore[no-untyped-call]


def _first_argument(arguments: bytes | memoryview) -> str:
    return bytes(arguments).split(b"\0", 1)[0].decode()


@contextmanager
def _transaction(connection: Connection) -> Iterator[None]:
    if connection.in_transaction():
        yield
    else:
        with connection.begin():
            yield
