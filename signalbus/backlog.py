"""How far behind the signals are: pending rows and the age of the oldest, measured.

One statement per database measures every model of it. Counting a table is
bounded: at most :data:`PENDING_COUNT_LIMIT` rows are counted (``SELECT
count(*) FROM (SELECT 1 FROM t LIMIT n)``: the scan stops at the limit), so a
backlog of millions costs what 100,000 rows cost, and reads as "at least"
that many. The oldest row is the one with the
lowest primary key, the row sent next; its age is read from the model's
``signalbus_timestamp_column`` against the database's clock, so clock skew
between the app's hosts does not enter.

:func:`signal_statuses` adds each model's trigger (see :mod:`signalbus.triggers`)
and its rows in quarantine (see :mod:`signalbus.quarantine`), and leaves the
backlog of a missing table unmeasured: ``flask signalbus status``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .model import SignalModel, get_timestamp_column, signal_table
from .quarantine import count_quarantined, has_quarantine, table_key
from .quarantine_admin import count_by_model
from .triggers import TriggerStatus, check_signal_triggers

if TYPE_CHECKING:
    from .bus import SignalBus

__all__ = ["PENDING_COUNT_LIMIT", "Backlog", "SignalStatus", "measure_backlogs", "signal_statuses"]

#: The most rows counted per table: a bigger backlog is reported as this many, capped.
PENDING_COUNT_LIMIT = 100_000


@dataclass(frozen=True)
class Backlog:
    """The rows of one signal model waiting to be sent, as measured at one moment."""

    #: Rows counted, at most :data:`PENDING_COUNT_LIMIT`.
    pending: int
    #: Seconds since the oldest row was recorded, when the model has a timestamp
    #: column and rows; else ``None``.
    oldest_age: float | None
    #: Rows in quarantine (0 when its database has no quarantine table).
    quarantined: int = 0

    @property
    def capped(self) -> bool:
        """Whether there were more rows than counted."""
        return self.pending >= PENDING_COUNT_LIMIT

    def describe_pending(self) -> str:
        """The count as a person reads it: ``"100000+"`` when capped."""
        return f"{self.pending}+" if self.capped else str(self.pending)


def measure_backlogs(
    signalbus: SignalBus,
    models: Iterable[SignalModel],
    connection_to: Callable[[Engine], Connection] | None = None,
) -> dict[SignalModel, Backlog]:
    """Measure the backlog of each of *models*: one read-only statement per database,
    and one more to count the quarantined rows where the quarantine table exists.

    *connection_to*, when given, provides the connection to each database;
    otherwise one is taken from the engine's pool (needs an app context).
    Raises :class:`~signalbus.errors.ConfigurationError` for a model whose
    ``signalbus_timestamp_column`` is not a ``DateTime`` column.
    """
    backlogs: dict[SignalModel, Backlog] = {}
    for group, connection in signalbus.transaction_per_database(models, connection_to):
        measured = connection.execute(_backlog_statement(group)).all()
        quarantined = _quarantined(connection)
        for index, pending, oldest_age in measured:
            model = group[index]
            backlogs[model] = Backlog(pending, oldest_age, quarantined.get(table_key(model), 0))
    return backlogs


def _quarantined(connection: Connection) -> dict[str, int]:
    """Quarantined rows by signal table; none in a database without the quarantine table."""
    return count_quarantined(connection) if has_quarantine(connection) else {}


@dataclass(frozen=True)
class SignalStatus:
    """One signal model's backlog, notification trigger and rows in quarantine."""

    trigger: TriggerStatus
    #: ``None`` when the model's table is missing.
    backlog: Backlog | None
    #: Rows in quarantine; ``None`` when its database has no quarantine table.
    quarantined: int | None

    @property
    def model(self) -> SignalModel:
        """The signal model."""
        return self.trigger.model


def signal_statuses(
    signalbus: SignalBus, models: Sequence[SignalModel], channel: str
) -> list[SignalStatus]:
    """Return the backlog, the trigger and the quarantined rows of each of *models*, in order.

    The triggers are checked against *channel* first: the backlog of a model
    whose table is missing is not measured. Raises
    :class:`~signalbus.errors.ConfigurationError` for a bad *channel* or a bad
    ``signalbus_timestamp_column`` (of any of *models*, its table missing or not).
    """
    for model in models:
        get_timestamp_column(model)
    wanted = set(models)
    tables = {
        name: model for name, model in signalbus.get_signal_tables().items() if model in wanted
    }
    triggers = {
        status.model: status for status in check_signal_triggers(signalbus.db, tables, channel)
    }
    backlogs = measure_backlogs(signalbus, [m for m in models if triggers[m].table_exists])
    quarantined = count_by_model(signalbus, models)
    return [
        SignalStatus(triggers[model], backlogs.get(model), quarantined[model]) for model in models
    ]


def _backlog_statement(models: list[SignalModel]) -> sa.CompoundSelect[Any]:
    """``SELECT index, bounded count, age of the first row`` for each model, in one UNION."""
    return sa.union_all(
        *(
            sa.select(sa.literal(index), _bounded_count(model), _oldest_age(model))
            for index, model in enumerate(models)
        )
    )


def _bounded_count(model: SignalModel) -> sa.ScalarSelect[Any]:
    rows = sa.select(sa.literal(1)).select_from(signal_table(model)).limit(PENDING_COUNT_LIMIT)
    return sa.select(sa.func.count()).select_from(rows.subquery()).scalar_subquery()


def _oldest_age(model: SignalModel) -> sa.ColumnElement[Any]:
    column = get_timestamp_column(model)
    if column is None:
        return sa.cast(sa.null(), sa.Float)
    table = signal_table(model)
    first = sa.select(column).order_by(*table.primary_key.columns).limit(1).scalar_subquery()
    # clock_timestamp(), not now(): the statement's own transaction may be old.
    age = sa.extract("epoch", sa.func.clock_timestamp() - first)
    return sa.cast(age, sa.Float)
