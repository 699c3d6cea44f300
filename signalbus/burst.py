"""A burst: the statement that picks, locks and deletes it, and its open transaction.

:class:`BurstStatement` runs a model's burst statement. On a psycopg
connection whose engine neither echoes nor has execution event listeners, it
runs the statement on the psycopg connection directly: at the one row of a
live wake-up, SQLAlchemy's execution layer (execution context, result
set-up, transaction bookkeeping) costs as much CPU as the statement's round
trip. Rows are SQLAlchemy :class:`~sqlalchemy.engine.Row` objects either way,
converted by the columns' result processors as SQLAlchemy would, and database
errors are SQLAlchemy's :class:`~sqlalchemy.exc.DBAPIError` subclasses.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import operator
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, IteratorResult, Row
from sqlalchemy.engine.result import SimpleResultMetaData
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import ReturningDelete

from .connections import ASYNC_COMMIT
from .model import SignalModel, signal_table

__all__ = ["Burst", "BurstStatement", "build_delete_statement", "run_scalar"]

_SET_ASYNC_COMMIT = f"SET LOCAL {ASYNC_COMMIT}"


def build_delete_statement(model: SignalModel) -> ReturningDelete[Any]:
    """Build the burst statement of *model*.

    ``DELETE ... WHERE pk = ANY (ARRAY(SELECT pk ... ORDER BY pk LIMIT
    :burst_count FOR UPDATE SKIP LOCKED)) RETURNING ...``: one round trip
    picks, locks and deletes a burst. Returned columns are labelled with the
    model's attribute names, so that ``row.attribute`` works as on an instance.

    ``= ANY (ARRAY(...))`` makes the burst's keys one value, found through the
    primary key's index: with ``IN (SELECT ...)`` the planner may pick a hash
    join over the whole table, 20x slower on a large backlog of narrow rows.
    Composite keys use ``(pk1, pk2) IN (SELECT ...)``.
    """
    table = signal_table(model)
    key_columns = table.primary_key.columns
    burst = (
        sa.select(*key_columns)
        .order_by(*key_columns)
        .limit(sa.bindparam("burst_count", type_=sa.Integer))
        .with_for_update(skip_locked=True)
    )
    returned = _returned_columns(model)
    if len(key_columns) == 1:
        [key] = key_columns
        picked = key == sa.any_(sa.func.array(burst.scalar_subquery()))
    else:
        picked = sa.tuple_(*key_columns).in_(burst)
    return sa.delete(table).where(picked).returning(*returned)


def build_keyed_delete(model: SignalModel) -> ReturningDelete[Any]:
    """``DELETE ... WHERE (pk) IN (SELECT pk ... WHERE (pk) IN :keys FOR UPDATE SKIP
    LOCKED) RETURNING ...``: those rows with the given keys that no other flush holds,
    returned as the burst statement returns them (for :mod:`signalbus.isolation`)."""
    table = signal_table(model)
    key = sa.tuple_(*table.primary_key.columns)
    keys: sa.BindParameter[Any] = sa.bindparam("keys", expanding=True)
    free = (
        sa.select(*table.primary_key.columns).where(key.in_(keys)).with_for_update(skip_locked=True)
    )
    return sa.delete(table).where(key.in_(free)).returning(*_returned_columns(model))


def _returned_columns(model: SignalModel) -> list[sa.Label[Any]]:
    """The table's columns, labelled with the model's attribute names."""
    mapper: sa.orm.Mapper[Any] = sa.inspect(model)
    table = signal_table(model)
    return [
        column.label(attribute.key)
        for attribute in mapper.column_attrs
        for column in attribute.columns[:1]
        if column.table is table
    ]


class Burst(abc.ABC):
    """Rows deleted by a transaction that is still open."""

    def __init__(self, rows: list[Row[Any]]) -> None:
        self.rows = rows
        #: When its statement started (``time.monotonic()``): set by :meth:`BurstStatement.fetch`.
        self.started = 0.0

    @abc.abstractmethod
    def commit(self, per_burst_settings: bool) -> None:
        """Commit, first setting ``ASYNC_COMMIT`` for the transaction if *per_burst_settings*."""

    @abc.abstractmethod
    def rollback(self) -> None:
        """Roll back: the rows are back in their table."""


class _CoreBurst(Burst):
    """A burst whose transaction is SQLAlchemy's."""

    def __init__(self, rows: list[Row[Any]], connection: Connection, transaction: Any) -> None:
        super().__init__(rows)
        self._connection = connection
        self._transaction = transaction

    def commit(self, per_burst_settings: bool) -> None:
        if per_burst_settings:
            self._connection.exec_driver_sql(_SET_ASYNC_COMMIT)
        self._transaction.commit()

    def rollback(self) -> None:
        self._transaction.rollback()


class _DriverBurst(Burst):
    """A burst whose transaction is the psycopg connection's own."""

    def __init__(self, rows: list[Row[Any]], connection: Connection) -> None:
        super().__init__(rows)
        self._connection = connection

    def commit(self, per_burst_settings: bool) -> None:
        driver = _driver_of(self._connection)
        with _as_dbapi_error(self._connection, "COMMIT"):
            if per_burst_settings:
                driver.execute(_SET_ASYNC_COMMIT)
            driver.commit()

    def rollback(self) -> None:
        with _as_dbapi_error(self._connection, "ROLLBACK"):
            _driver_of(self._connection).rollback()


@dataclass(frozen=True)
class _Shape:
    """How to make rows of one result's columns: their names and result processors."""

    metadata: SimpleResultMetaData
    processors: tuple[Callable[[Any], Any] | None, ...]

    def rows(self, values: Sequence[tuple[Any, ...]]) -> list[Row[Any]]:
        if any(self.processors):
            values = [self._processed(row) for row in values]
        return cast("list[Row[Any]]", IteratorResult(self.metadata, iter(values)).all())

    def _processed(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        pairs = zip(self.processors, row, strict=True)
        return tuple(value if process is None else process(value) for process, value in pairs)


class BurstStatement:
    """The burst statement of one model: deletes a burst, leaving its transaction open."""

    def __init__(self, model: SignalModel) -> None:
        self.statement = build_delete_statement(model)
        self.keyed_statement = build_keyed_delete(model)
        mapper: sa.orm.Mapper[Any] = sa.inspect(model)
        keys = [mapper.get_property_by_column(column).key for column in mapper.primary_key]
        self._sort_key = operator.attrgetter(*keys)
        self._key_getters = [operator.attrgetter(key) for key in keys]
        returned = self.statement.exported_columns
        self._names = [column.name for column in returned]
        self._types = [column.type for column in returned]
        self._sql: dict[Dialect, str] = {}
        self._shapes: dict[tuple[Dialect, tuple[int, ...]], _Shape] = {}

    def key_of(self, row: Any) -> tuple[Any, ...]:
        """The primary key of *row*, a tuple even for a single column."""
        return tuple(get(row) for get in self._key_getters)

    def fetch(self, connection: Connection, burst_count: int, on_driver: bool) -> Burst:
        """Delete up to *burst_count* rows on *connection*, in primary-key order, uncommitted.

        *on_driver* tells whether to run the statement on the psycopg connection
        directly (see :func:`~signalbus.connections.runs_on_driver`).
        """
        started = time.monotonic()
        if on_driver:
            burst: Burst = self._fetch_on_driver(connection, burst_count)
        else:
            burst = self._fetch_on_core(connection, burst_count)
        burst.rows.sort(key=self._sort_key)
        burst.started = started
        return burst

    def fetch_keys(self, connection: Connection, keys: Sequence[tuple[Any, ...]]) -> Burst:
        """Delete the rows with primary keys *keys* that are still there and that no other
        transaction holds, uncommitted."""
        started = time.monotonic()
        transaction = connection.begin()
        try:
            result = connection.execute(self.keyed_statement, {"keys": list(keys)})
            rows = sorted(result, key=self._sort_key)
        except BaseException:
            transaction.rollback()
            raise
        burst = _CoreBurst(rows, connection, transaction)
        burst.started = started
        return burst

    def _fetch_on_core(self, connection: Connection, burst_count: int) -> Burst:
        transaction = connection.begin()
        try:
            rows = list(connection.execute(self.statement, {"burst_count": burst_count}))
        except BaseException:
            transaction.rollback()
            raise
        return _CoreBurst(rows, connection, transaction)

    def _fetch_on_driver(self, connection: Connection, burst_count: int) -> Burst:
        sql = self._sql.get(connection.dialect)
        if sql is None:
            sql = self._sql[connection.dialect] = str(
                self.statement.compile(dialect=connection.dialect)
            )
        driver = _driver_of(connection)
        with _as_dbapi_error(connection, sql):
            try:
                cursor = driver.execute(sql, {"burst_count": burst_count})
                values = cursor.fetchall()
            except BaseException:
                with contextlib.suppress(psycopg.Error):
                    driver.rollback()
                raise
        return _DriverBurst(self._shape(connection.dialect, cursor).rows(values), connection)

    def _shape(self, dialect: Dialect, cursor: psycopg.Cursor[Any]) -> _Shape:
        """The shape of the rows, by the type OIDs of the result's columns."""
        result = cursor.pgresult
        type_oids = tuple(result.ftype(index) for index in range(result.nfields)) if result else ()
        shape = self._shapes.get((dialect, type_oids))
        if shape is None:
            processors = tuple(
                type_.dialect_impl(dialect).result_processor(dialect, oid)
                for type_, oid in zip(self._types, type_oids, strict=True)
            )
            metadata = SimpleResultMetaData(self._names)
            shape = self._shapes[dialect, type_oids] = _Shape(metadata, processors)
        return shape


def run_scalar(
    connection: Connection, on_driver: bool, statement: sa.TextClause, parameters: dict[str, Any]
) -> Any:
    """Run *statement* on *connection*, outside any burst, committed; return its first value.

    On the driver, in autocommit: one round trip, no ``BEGIN`` or ``COMMIT``.
    """
    if not on_driver:
        with connection.begin():
            return connection.execute(statement, parameters).scalar()
    driver = _driver_of(connection)
    with _as_dbapi_error(connection, "SET autocommit"):
        driver.autocommit = True
    try:
        return _driver_scalar(connection, statement, parameters)
    finally:
        with contextlib.suppress(psycopg.Error):  # a broken connection is closed anyway
            driver.autocommit = False


def _driver_scalar(
    connection: Connection, statement: sa.TextClause, parameters: dict[str, Any]
) -> Any:
    sql = _compiled(statement, connection.dialect)
    with _as_dbapi_error(connection, sql):
        row = _driver_of(connection).execute(sql, parameters).fetchone()
    return None if row is None else row[0]


@functools.cache
def _compiled(statement: sa.TextClause, dialect: Dialect) -> str:
    return str(statement.compile(dialect=dialect))


def _driver_of(connection: Connection) -> psycopg.Connection[Any]:
    # With the synchronous psycopg dialect the DBAPI connection is psycopg's own.
    driver: psycopg.Connection[Any] = connection.connection.dbapi_connection  # type: ignore[assignment]
    return driver


@contextlib.contextmanager
def _as_dbapi_error(connection: Connection, sql: str) -> Iterator[None]:
    """Raise psycopg's errors as SQLAlchemy does; a lost connection is invalidated."""
    try:
        yield
    except psycopg.Error as error:
        dialect = connection.dialect
        dbapi_connection = connection.connection.dbapi_connection
        lost = dialect.is_disconnect(error, dbapi_connection, None)  # type: ignore[arg-type]
        if lost:
            connection.invalidate()
        raise DBAPIError.instance(
            sql, None, error, psycopg.Error, connection_invalidated=lost, dialect=dialect
        ) from error
