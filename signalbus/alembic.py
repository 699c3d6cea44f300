"""Alembic operations for signal triggers, and their autogenerate support.

Importing :mod:`signalbus` registers two reversible operations::

    op.create_signal_trigger("order_placed_signal")
    op.drop_signal_trigger("order_placed_signal", schema="sales")

and one that upgrades the function every trigger calls, idempotently (a
database whose triggers an older signalbus installed needs it once; its
downgrade has nothing to undo, since the current function serves listeners
of every version)::

    op.replace_signal_function()

Their DDL comes from :mod:`signalbus.triggers`. The trigger's channel is the
``channel`` argument when given, else the app's ``SIGNALBUS_CHANNEL`` when
the migration runs in a Flask app context (as under Flask-Migrate), else
``"signalbus"``.

Autogenerate (``flask db migrate``) compares the signal models of the app's
signal bus with the triggers in the database: it adds
``op.create_signal_trigger`` for every signal table without one, right after
the table's ``op.create_table`` when the table is new, and
``op.drop_signal_trigger`` for every table having one without being a
signal model any more, right before the table's ``op.drop_table`` when the
table goes. Without a Flask app context it compares nothing. Tables outside
the default schema are compared when ``include_schemas`` is set, and the
``include_name`` / ``include_object`` hooks apply as to tables.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import comparators, renderers
from alembic.autogenerate.api import AutogenContext
from alembic.operations import MigrateOperation, Operations
from alembic.operations.ops import CreateTableOp, DropTableOp, UpgradeOps
from flask import current_app, has_app_context

from . import triggers
from .config import DEFAULT_CHANNEL, channel_setting
from .model import signal_table

__all__ = [
    "CreateSignalTriggerOp",
    "DropSignalTriggerOp",
    "ReplaceSignalFunctionOp",
    "compare_signal_triggers",
]

_IMPORT = "import signalbus.alembic  # noqa: F401"

# A child of alembic's logger: the logging config of alembic.ini (Flask-Migrate's
# included) shows these lines with alembic's own "Detected added table" ones.
logger = logging.getLogger("alembic.autogenerate.signalbus")


class _SignalTriggerOp(MigrateOperation):
    def __init__(
        self, table_name: str, *, schema: str | None = None, channel: str | None = None
    ) -> None:
        self.table_name = table_name
        self.schema = schema
        self.channel = channel

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.table_name!r}, schema={self.schema!r})"

    def _arguments(self) -> dict[str, Any]:
        return {"schema": self.schema, "channel": self.channel}


@Operations.register_operation("create_signal_trigger")
class CreateSignalTriggerOp(_SignalTriggerOp):
    """Install the notification trigger of a signal table (and the shared function)."""

    @classmethod
    def create_signal_trigger(
        cls,
        operations: Operations,
        table_name: str,
        *,
        schema: str | None = None,
        channel: str | None = None,
    ) -> None:
        """Install the notification trigger of *table_name* (idempotent).

        *channel* defaults to the app's ``SIGNALBUS_CHANNEL``, else ``"signalbus"``.
        """
        operations.invoke(cls(table_name, schema=schema, channel=channel))

    def reverse(self) -> DropSignalTriggerOp:
        return DropSignalTriggerOp(self.table_name, **self._arguments())

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("add_signal_trigger", self.schema, self.table_name)


@Operations.register_operation("drop_signal_trigger")
class DropSignalTriggerOp(_SignalTriggerOp):
    """Drop the notification trigger of a table (and the shared function once unused)."""

    @classmethod
    def drop_signal_trigger(
        cls,
        operations: Operations,
        table_name: str,
        *,
        schema: str | None = None,
        channel: str | None = None,
    ) -> None:
        """Drop the notification trigger of *table_name*, if it has one.

        *channel* is only used by the reverse operation (downgrade in autogenerate).
        """
        operations.invoke(cls(table_name, schema=schema, channel=channel))

    def reverse(self) -> CreateSignalTriggerOp:
        return CreateSignalTriggerOp(self.table_name, **self._arguments())

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("remove_signal_trigger", self.schema, self.table_name)


@Operations.register_operation("replace_signal_function")
class ReplaceSignalFunctionOp(MigrateOperation):
    """Create or replace the function every signal trigger calls with the current one."""

    @classmethod
    def replace_signal_function(cls, operations: Operations) -> None:
        """Create or replace the shared trigger function (idempotent)."""
        operations.invoke(cls())


@Operations.implementation_for(ReplaceSignalFunctionOp)
def _replace_signal_function(operations: Operations, operation: ReplaceSignalFunctionOp) -> None:
    for statement in triggers.function_statements():
        operations.execute(statement)


@Operations.implementation_for(CreateSignalTriggerOp)
def _create_signal_trigger(operations: Operations, operation: CreateSignalTriggerOp) -> None:
    channel = operation.channel or default_channel()
    for statement in triggers.install_statements(operation.table_name, operation.schema, channel):
        operations.execute(statement)


@Operations.implementation_for(DropSignalTriggerOp)
def _drop_signal_trigger(operations: Operations, operation: DropSignalTriggerOp) -> None:
    for statement in triggers.drop_statements(operation.table_name, operation.schema):
        operations.execute(statement)
    if operations.get_context().as_sql:
        return  # Offline, whether other triggers use the function is unknown: keep it.
    triggers.drop_unused_function(operations.get_bind())


def default_channel() -> str:
    """Return the app's ``SIGNALBUS_CHANNEL`` in an app context, else ``"signalbus"``."""
    if has_app_context():
        return channel_setting(current_app.config)
    return DEFAULT_CHANNEL


# --- autogenerate ----------------------------------------------------------------------

_Key = tuple[str | None, str]  # (schema or None for the default schema, table name)


def _register_comparator(function: Any) -> Any:
    try:  # alembic >= 1.18: run after the table comparators, which add create_table.
        from alembic.util import DispatchPriority

        return comparators.dispatch_for("schema", priority=DispatchPriority.LAST)(function)
    except ImportError:  # Older alembic runs the global comparators in registration order.
        return comparators.dispatch_for("schema")(function)


@_register_comparator
def compare_signal_triggers(
    autogen_context: AutogenContext, upgrade_ops: UpgradeOps, schemas: Iterable[str | None]
) -> None:
    """Add the create/drop signal trigger operations that the database needs."""
    connection = autogen_context.connection
    if connection is None or connection.dialect.name != "postgresql" or not has_app_context():
        return
    default_schema = connection.dialect.default_schema_name
    wanted = _wanted_triggers(autogen_context, default_schema, set(schemas))
    found = _found_triggers(autogen_context, default_schema, set(schemas))
    for key in sorted(wanted - found, key=_sort_key):
        logger.info("Detected added signal trigger on %r", _display(key))
        index = _find(upgrade_ops, CreateTableOp, key, default_schema)
        create = CreateSignalTriggerOp(key[1], schema=key[0])
        upgrade_ops.ops.insert(len(upgrade_ops.ops) if index is None else index + 1, create)
    for key in sorted(found - wanted, key=_sort_key):
        logger.info("Detected removed signal trigger on %r", _display(key))
        index = _find(upgrade_ops, DropTableOp, key, default_schema)
        drop = DropSignalTriggerOp(key[1], schema=key[0])
        upgrade_ops.ops.insert(len(upgrade_ops.ops) if index is None else index, drop)


def _wanted_triggers(
    autogen_context: AutogenContext, default_schema: str | None, schemas: set[str | None]
) -> set[_Key]:
    signalbus = current_app.extensions.get("signalbus")
    if signalbus is None:
        return set()
    metadata = autogen_context.metadata
    metadatas = metadata if isinstance(metadata, list | tuple) else [metadata]
    wanted = set()
    for model in signalbus.get_signal_models():
        table = signal_table(model)
        key = _key(table.schema, table.name, default_schema)
        if (
            any(table.metadata is metadata for metadata in metadatas)
            and key[0] in schemas
            and _included(autogen_context, key, table)
        ):
            wanted.add(key)
    return wanted


def _found_triggers(
    autogen_context: AutogenContext, default_schema: str | None, schemas: set[str | None]
) -> set[_Key]:
    assert autogen_context.connection is not None
    rows = autogen_context.connection.execute(sa.text(triggers.load_sql("installed_triggers")))
    found = {_key(row.schema_name, row.table_name, default_schema) for row in rows}
    return {key for key in found if key[0] in schemas and _included(autogen_context, key, None)}


def _included(autogen_context: AutogenContext, key: _Key, table: sa.Table | None) -> bool:
    schema, name = key
    if not autogen_context.run_name_filters(name, "table", {"schema_name": schema}):
        return False
    return table is None or autogen_context.run_object_filters(table, name, "table", False, None)


def _key(schema: str | None, name: str, default_schema: str | None) -> _Key:
    return (None if schema == default_schema else schema, name)


def _sort_key(key: _Key) -> tuple[str, str]:
    return (key[0] or "", key[1])


def _display(key: _Key) -> str:
    return triggers.payload_name(key[1], key[0])


def _find(
    upgrade_ops: UpgradeOps,
    kind: type[CreateTableOp | DropTableOp],
    key: _Key,
    default_schema: str | None,
) -> int | None:
    """Return the index of the *kind* operation (create/drop table) of table *key*, if any."""
    for index, candidate in enumerate(upgrade_ops.ops):
        if (
            isinstance(candidate, kind)
            and _key(candidate.schema, candidate.table_name, default_schema) == key
        ):
            return index
    return None


@renderers.dispatch_for(CreateSignalTriggerOp)
def _render_create(autogen_context: AutogenContext, operation: CreateSignalTriggerOp) -> str:
    return _render("create_signal_trigger", autogen_context, operation)


@renderers.dispatch_for(DropSignalTriggerOp)
def _render_drop(autogen_context: AutogenContext, operation: DropSignalTriggerOp) -> str:
    return _render("drop_signal_trigger", autogen_context, operation)


def _render(name: str, autogen_context: AutogenContext, operation: _SignalTriggerOp) -> str:
    autogen_context.imports.add(_IMPORT)
    arguments = [repr(operation.table_name)]
    arguments += [f"{key}={value!r}" for key, value in operation._arguments().items() if value]
    return f"op.{name}({', '.join(arguments)})"
