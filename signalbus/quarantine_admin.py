"""The quarantine of an app's signals, across its databases: what ``flask signalbus
quarantine``, ``requeue`` and ``purge`` do.

One transaction per database, each checked to have the quarantine table;
ids (unique only within a database) are checked before anything is done. The
row-level work is :mod:`signalbus.quarantine`'s.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection

from .errors import SignalBusError
from .model import SignalModel, signal_table
from .quarantine import (
    QUARANTINE_TABLE,
    QuarantinedRow,
    count_quarantined,
    has_quarantine,
    list_quarantined,
    purge,
    requeue,
    table_key,
)

if TYPE_CHECKING:
    from .bus import SignalBus

__all__ = [
    "Conflict",
    "NotQuarantinedError",
    "QuarantineMissingError",
    "count_by_model",
    "purge_selected",
    "quarantined_by_model",
    "requeue_selected",
]


class QuarantineMissingError(SignalBusError):
    """A database of the signals has no quarantine table: it was not migrated since."""


class NotQuarantinedError(SignalBusError):
    """Ids were given that select no quarantined row, or rows in more than one database."""

    def __init__(self, missing: Sequence[int], ambiguous: Sequence[int]) -> None:
        #: Ids of no quarantined row (of the signals selected).
        self.missing = list(missing)
        #: Ids of a quarantined row in more than one database (of the signals selected).
        self.ambiguous = list(ambiguous)
        super().__init__(f"not quarantined: {missing}; in several databases: {ambiguous}")


@dataclass(frozen=True)
class Conflict:
    """A row :func:`requeue_selected` left in quarantine: its key is taken again."""

    model: SignalModel
    row: QuarantinedRow


@dataclass(frozen=True)
class _Quarantine:
    """One database's quarantine, in a transaction: the models there, by their table key."""

    connection: Connection
    tables: dict[str, SignalModel]
    #: The ids to act on there, or ``None`` for every row of *tables*.
    ids: list[int] | None = None

    def rows(self) -> list[QuarantinedRow]:
        """Its selected rows, their keys in the order of their model's primary key."""
        found = list_quarantined(self.connection, self.tables, self.ids)
        return [_in_key_order(self.tables[row.signal_table], row) for row in found]


@contextlib.contextmanager
def _quarantines(
    signalbus: SignalBus, models: Sequence[SignalModel], ids: Sequence[int] | None = None
) -> Iterator[list[_Quarantine]]:
    """A transaction on each database of *models*, committed at the end (rolled back on error).

    Raises :class:`QuarantineMissingError` for a database without the table, and
    :class:`NotQuarantinedError` for *ids* that are no row of *models*, or rows
    of them in several databases (an id is unique only within a database).
    """
    redact = signalbus.redactor()
    with contextlib.ExitStack() as stack:
        quarantines = []
        for engine, group in signalbus.models_by_engine(models).items():
            connection = stack.enter_context(engine.begin())
            if not has_quarantine(connection):
                where = redact(engine.url.render_as_string(hide_password=True))
                raise QuarantineMissingError(
                    f"The quarantine table {QUARANTINE_TABLE} is missing in {where}"
                    " (hint: flask db upgrade, or flask signalbus triggers --install)"
                )
            quarantines.append(_Quarantine(connection, {table_key(m): m for m in group}))
        yield quarantines if ids is None else _with_ids(quarantines, ids)


def _with_ids(quarantines: list[_Quarantine], ids: Sequence[int]) -> list[_Quarantine]:
    """Each quarantine holding some of *ids*, narrowed to them; raises NotQuarantinedError."""
    wanted = sorted(set(ids))
    narrowed = [dataclasses.replace(q, ids=wanted) for q in quarantines]
    held = [(q, [row.id for row in q.rows()]) for q in narrowed]
    databases = collections.Counter(record_id for _, found in held for record_id in found)
    missing = [record_id for record_id in wanted if not databases[record_id]]
    ambiguous = [record_id for record_id in wanted if databases[record_id] > 1]
    if missing or ambiguous:
        raise NotQuarantinedError(missing, ambiguous)
    return [dataclasses.replace(q, ids=found) for q, found in held if found]


def quarantined_by_model(
    signalbus: SignalBus, models: Sequence[SignalModel]
) -> dict[SignalModel, list[QuarantinedRow]]:
    """The quarantined rows of each of *models*, in their order (``[]`` for none).

    Raises :class:`QuarantineMissingError` for a database without the table.
    """
    found: dict[SignalModel, list[QuarantinedRow]] = {model: [] for model in models}
    with _quarantines(signalbus, models) as quarantines:
        for quarantine in quarantines:
            for row in quarantine.rows():
                found[quarantine.tables[row.signal_table]].append(row)
    return found


def count_by_model(
    signalbus: SignalBus, models: Sequence[SignalModel]
) -> dict[SignalModel, int | None]:
    """How many rows of each of *models* are in quarantine; ``None`` where the table is missing."""
    counts: dict[SignalModel, int | None] = {}
    for group, connection in signalbus.transaction_per_database(models):
        by_table = count_quarantined(connection) if has_quarantine(connection) else None
        for model in group:
            counts[model] = None if by_table is None else by_table.get(table_key(model), 0)
    return counts


def requeue_selected(
    signalbus: SignalBus, models: Sequence[SignalModel], ids: Sequence[int] | None = None
) -> tuple[int, list[Conflict]]:
    """Put back the quarantined rows of *models* (only those with *ids*, when given).

    One transaction per database. Returns how many rows went back, and the
    rows that stay because their key is taken again. Raises as
    :func:`quarantined_by_model` does, and :class:`NotQuarantinedError` for
    *ids* not all rows of *models* (in a single database each): nothing is
    requeued then.
    """
    requeued, conflicts = 0, []
    with _quarantines(signalbus, models, ids) as quarantines:
        for q in quarantines:
            result = requeue(q.connection, q.tables, q.tables, q.ids)
            requeued += len(result.done)
            for row in result.conflicts:
                model = q.tables[row.signal_table]
                conflicts.append(Conflict(model, _in_key_order(model, row)))
    return requeued, conflicts


def purge_selected(
    signalbus: SignalBus, models: Sequence[SignalModel], ids: Sequence[int] | None = None
) -> int:
    """Delete the quarantined rows of *models* (only those with *ids*, when given).

    One transaction per database; returns how many rows were deleted. Raises
    as :func:`requeue_selected` does, nothing deleted then.
    """
    with _quarantines(signalbus, models, ids) as quarantines:
        return sum(purge(q.connection, q.tables, q.ids) for q in quarantines)


def _in_key_order(model: SignalModel, row: QuarantinedRow) -> QuarantinedRow:
    """*row* with its key's columns in the order of *model*'s primary key (jsonb sorts them)."""
    names = [column.name for column in signal_table(model).primary_key.columns]
    key = {name: row.row_key[name] for name in names if name in row.row_key}
    return dataclasses.replace(row, row_key={**key, **row.row_key})
