"""The quarantine: where a row whose send keeps failing on its own is parked, and seen.

One table per database, ``signalbus_quarantine``, holds a record per row
that failed alone (see :mod:`signalbus.isolation`): the signal's table, the
row's key and column values (``to_jsonb`` of the row: enough to re-insert it
exactly, primary key included), the last error, the attempts, and the times.
A record whose ``quarantined_at`` is null counts the attempts of a row that
is still in its table; once the attempts reach the model's maximum, the row
is deleted from its table and ``quarantined_at`` set, in one transaction.

:func:`requeue` puts quarantined rows back into their tables
(``jsonb_populate_record``), :func:`purge` deletes them. The table is part of
the app's default metadata (so ``flask db migrate`` adds it, see
:func:`quarantine_table`) and is created by ``flask signalbus triggers
--install`` for apps without alembic.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.engine import Connection

from .model import SignalModel, signal_table

if TYPE_CHECKING:
    pass

__all__ = [
    "QUARANTINE_TABLE",
    "QuarantinedRow",
    "Requeued",
    "count_quarantined",
    "forget_failure",
    "forget_stale_failures",
    "has_quarantine",
    "list_quarantined",
    "purge",
    "quarantine_table",
    "record_failure",
    "requeue",
    "table_key",
]

#: The name of the quarantine table, in every database that has signal tables.
QUARANTINE_TABLE = "signalbus_quarantine"

#: The unique index of the attempt records of rows still in their tables.
OPEN_ROW_INDEX = "signalbus_quarantine_open_row"


def quarantine_table(metadata: sa.MetaData) -> sa.Table:
    """Return the quarantine table of *metadata*, defining it there on first use."""
    existing = metadata.tables.get(QUARANTINE_TABLE)
    if existing is not None:
        return existing
    return sa.Table(
        QUARANTINE_TABLE,
        metadata,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("signal_table", sa.Text, nullable=False),
        sa.Column("row_key", JSONB, nullable=False),
        sa.Column("row_values", JSONB, nullable=False),
        sa.Column("last_error", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("first_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("quarantined_at", sa.DateTime(timezone=True)),
        # One attempt counter per row still in its table; a key taken again by a new row
        # once the first is quarantined gets a record of its own.
        sa.Index(
            OPEN_ROW_INDEX,
            "signal_table",
            "row_key",
            unique=True,
            postgresql_where=sa.text("quarantined_at IS NULL"),
        ),
    )


#: The table as the functions below use it (the same columns as every app's).
_QUARANTINE = quarantine_table(sa.MetaData())


def table_key(model: SignalModel) -> str:
    """The name the quarantine records *model*'s table under: ``schema.table`` or ``table``."""
    table = signal_table(model)
    return table.name if table.schema is None else f"{table.schema}.{table.name}"


def _row_key(table: sa.Table) -> sa.ColumnElement[Any]:
    """``jsonb_build_object('pk1', pk1, ...)``: the row's key as the quarantine holds it."""
    pairs: list[Any] = []
    for column in table.primary_key.columns:
        pairs += [sa.literal(str(column.name), sa.Text), column]
    return sa.func.jsonb_build_object(*pairs, type_=JSONB)


def _row_values(table: sa.Table) -> sa.ColumnElement[Any]:
    """``to_jsonb(table.*)``: the whole row, even with a column named as its table."""
    return sa.func.to_jsonb(sa.literal_column(f"{_qualified(table)}.*"), type_=JSONB)


def _key_matches(table: sa.Table, key: Sequence[Any]) -> sa.ColumnElement[bool]:
    return sa.and_(
        *(column == value for column, value in zip(table.primary_key.columns, key, strict=True))
    )


def record_failure(
    connection: Connection, model: SignalModel, key: Sequence[Any], error: str, max_attempts: int
) -> int | None:
    """Count a failed attempt of the row with primary key *key*; quarantine it at *max_attempts*.

    Runs in the caller's transaction. Returns the row's attempts so far, or
    ``None`` if the row is no longer in its table (another process sent it).
    The row is quarantined with its values as deleted, in this transaction.
    """
    table = signal_table(model)
    now = sa.func.now()
    source = sa.select(
        sa.literal(table_key(model)),
        _row_key(table),
        _row_values(table),
        sa.literal(error, sa.Text),
        sa.literal(1),
        now,
        now,
    ).where(_key_matches(table, key))
    columns = ["signal_table", "row_key", "row_values", "last_error", "attempts",
               "first_failed_at", "last_failed_at"]  # fmt: skip
    new = insert(_QUARANTINE).from_select(columns, source)
    upsert = new.on_conflict_do_update(
        index_elements=["signal_table", "row_key"],
        index_where=_QUARANTINE.c.quarantined_at.is_(None),
        set_={
            "attempts": _QUARANTINE.c.attempts + 1,
            "last_error": new.excluded.last_error,
            "last_failed_at": new.excluded.last_failed_at,
            "row_values": new.excluded.row_values,
        },
    ).returning(_QUARANTINE.c.id, _QUARANTINE.c.attempts)
    recorded = connection.execute(upsert).first()
    if recorded is None:
        return None
    record_id, attempts = recorded
    if attempts >= max_attempts:
        moved = sa.delete(table).where(_key_matches(table, key)).returning(_row_values(table))
        values = connection.execute(moved).scalar()
        record = _QUARANTINE.c.id == record_id
        if values is None:  # sent by another process since the count: no record to keep
            connection.execute(sa.delete(_QUARANTINE).where(record))
            return None
        parked = {"quarantined_at": now, "row_values": values}
        connection.execute(sa.update(_QUARANTINE).where(record).values(parked))
    return int(attempts)


def forget_failure(connection: Connection, model: SignalModel, key: Sequence[Any]) -> None:
    """Drop the attempt record of the row of *model* with primary key *key*: it was sent."""
    table = signal_table(model)
    pairs: list[Any] = []
    for column, value in zip(table.primary_key.columns, key, strict=True):
        pairs += [
            sa.literal(str(column.name), sa.Text),
            sa.cast(sa.literal(value, column.type), column.type),
        ]
    connection.execute(
        sa.delete(_QUARANTINE).where(
            _QUARANTINE.c.signal_table == table_key(model),
            _QUARANTINE.c.quarantined_at.is_(None),
            _QUARANTINE.c.row_key == sa.func.jsonb_build_object(*pairs, type_=JSONB),
        )
    )


def forget_stale_failures(connection: Connection, model: SignalModel) -> None:
    """Drop the attempt records of rows of *model* no longer in its table (sent since)."""
    table = signal_table(model)
    still_there = sa.select(sa.literal(1)).where(_row_key(table) == _QUARANTINE.c.row_key)
    connection.execute(
        sa.delete(_QUARANTINE).where(
            _QUARANTINE.c.signal_table == table_key(model),
            _QUARANTINE.c.quarantined_at.is_(None),
            ~still_there.exists(),
        )
    )


@dataclass(frozen=True)
class QuarantinedRow:
    """A row in quarantine."""

    id: int
    signal_table: str
    row_key: dict[str, Any]
    attempts: int
    last_error: str
    first_failed_at: datetime
    last_failed_at: datetime
    quarantined_at: datetime


def list_quarantined(
    connection: Connection, tables: Iterable[str] | None = None, ids: Iterable[int] | None = None
) -> list[QuarantinedRow]:
    """The quarantined rows (of *tables*, with *ids*, when given), by signal table and id."""
    q = _QUARANTINE.c
    query = (
        sa.select(
            q.id,
            q.signal_table,
            q.row_key,
            q.attempts,
            q.last_error,
            q.first_failed_at,
            q.last_failed_at,
            q.quarantined_at,
        )
        .where(q.quarantined_at.is_not(None))
        .order_by(q.signal_table, q.id)
    )
    query = _narrowed(query, tables, ids)
    return [QuarantinedRow(*row) for row in connection.execute(query)]


def count_quarantined(connection: Connection) -> dict[str, int]:
    """How many rows each signal table has in quarantine (tables with none are absent)."""
    q = _QUARANTINE.c
    query = (
        sa.select(q.signal_table, sa.func.count())
        .where(q.quarantined_at.is_not(None))
        .group_by(q.signal_table)
    )
    return {name: count for name, count in connection.execute(query)}


@dataclass(frozen=True)
class Requeued:
    """What :func:`requeue` did: the ids put back, and those whose key was taken."""

    done: list[int]
    conflicts: list[QuarantinedRow]


def requeue(
    connection: Connection,
    tables: dict[str, SignalModel],
    names: Iterable[str] | None = None,
    ids: Iterable[int] | None = None,
) -> Requeued:
    """Put quarantined rows back into their signal tables, exactly as they were.

    *tables* maps the quarantine's table names to models (see :func:`table_key`).
    Runs in the caller's transaction; a row whose primary key is taken again
    stays in quarantine and is reported in :attr:`Requeued.conflicts`.
    """
    done, conflicts = [], []
    for row in list_quarantined(connection, names, ids):
        if _put_back(connection, signal_table(tables[row.signal_table]), row.id):
            connection.execute(sa.delete(_QUARANTINE).where(_QUARANTINE.c.id == row.id))
            done.append(row.id)
        else:
            conflicts.append(row)
    return Requeued(done, conflicts)


def _put_back(connection: Connection, table: sa.Table, record_id: int) -> bool:
    """Insert the quarantined row *record_id* into *table*; false if its key is taken.

    Only the columns it has a value for and that are not generated: a column
    added since it was quarantined gets its default.
    """
    values = connection.execute(
        sa.select(_QUARANTINE.c.row_values).where(_QUARANTINE.c.id == record_id)
    ).scalar_one()
    names = [name for name in _insertable_columns(connection, table) if name in values]
    columns = ", ".join(_PREPARER.quote(name) for name in names)
    name = _qualified(table)
    inserted = connection.execute(
        sa.text(
            # The row's own key, even for a GENERATED ALWAYS identity column.
            f"INSERT INTO {name} ({columns}) OVERRIDING SYSTEM VALUE"
            f" SELECT {columns} FROM jsonb_populate_record(NULL::{name}, :row_values)"
            " ON CONFLICT DO NOTHING"
        ).bindparams(sa.bindparam("row_values", type_=JSONB)),
        {"row_values": values},
    ).rowcount
    return bool(inserted)


def _insertable_columns(connection: Connection, table: sa.Table) -> list[str]:
    """The table's columns in the database that take a value: not dropped, not generated."""
    query = sa.text(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(:table)"
        " AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum"
    )
    return list(connection.execute(query, {"table": _qualified(table)}).scalars())


def purge(
    connection: Connection, names: Iterable[str] | None = None, ids: Iterable[int] | None = None
) -> int:
    """Delete quarantined rows (of *names*, with *ids*, when given); return how many."""
    query = sa.delete(_QUARANTINE).where(_QUARANTINE.c.quarantined_at.is_not(None))
    return connection.execute(_narrowed(query, names, ids)).rowcount


def has_quarantine(connection: Connection) -> bool:
    """Whether the database of *connection* has the quarantine table."""
    return sa.inspect(connection).has_table(QUARANTINE_TABLE)


def _narrowed(query: Any, tables: Iterable[str] | None, ids: Iterable[int] | None) -> Any:
    if tables is not None:
        query = query.where(_QUARANTINE.c.signal_table.in_(list(tables)))
    if ids is not None:
        query = query.where(_QUARANTINE.c.id.in_(list(ids)))
    return query


def _qualified(table: sa.Table) -> str:
    return _PREPARER.format_table(table)


_PREPARER = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]
