"""The flush routine: pick, lock, delete, send and commit signal rows in bursts.

Every way of sending (``flushmany``, the listener's wake-ups and sweeps) goes
through :class:`ModelFlusher`.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, RootTransaction, Row
from sqlalchemy.sql.dml import ReturningDelete

from .atomic import retry_on_deadlock
from .model import SignalModel, get_burst_count, send_rows, signal_table

__all__ = ["ModelFlusher"]

#: Bursts at least this big are pipelined: the next burst is fetched while the
#: current one is being sent. Smaller ones are not worth a second connection.
PIPELINE_MIN_BURST = 100


def build_delete_statement(model: SignalModel) -> ReturningDelete[Any]:
    """Build the burst statement of *model*.

    ``DELETE ... WHERE pk IN (SELECT pk ... ORDER BY pk LIMIT :burst_count
    FOR UPDATE SKIP LOCKED) RETURNING ...``: one round trip picks, locks and
    deletes a burst. Returned columns are labelled with the model's attribute
    names, so that ``row.attribute`` works as on an instance.
    """
    mapper: sa.orm.Mapper[Any] = sa.inspect(model)
    table = signal_table(model)
    key_columns = table.primary_key.columns
    burst = (
        sa.select(*key_columns)
        .order_by(*key_columns)
        .limit(sa.bindparam("burst_count", type_=sa.Integer))
        .with_for_update(skip_locked=True)
    )
    returned = [
        column.label(attribute.key)
        for attribute in mapper.column_attrs
        for column in attribute.columns[:1]
        if column.table is table
    ]
    return sa.delete(table).where(sa.tuple_(*key_columns).in_(burst)).returning(*returned)


@dataclass
class Burst:
    """Rows deleted by a transaction that is still open."""

    connection: Connection
    transaction: RootTransaction
    rows: list[Row[Any]]

    def commit(self) -> None:
        # Losing this commit in a crash only sends the rows again, which
        # at-least-once allows; not waiting for the WAL flush shortens every burst.
        self.connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
        self.transaction.commit()

    def rollback(self) -> None:
        self.transaction.rollback()


class ModelFlusher:
    """Drains one signal model.

    A burst's rows are deleted, sent, and only then committed; a send that
    raises rolls its burst back and the exception propagates. Rows go out in
    primary-key order. Full bursts of :data:`PIPELINE_MIN_BURST` rows or more
    are pipelined: while one burst is being sent, a second connection already
    deletes (without committing) the next one, which ``SKIP LOCKED`` keeps
    disjoint from the first. If a send fails, both are rolled back.
    """

    def __init__(self, model: SignalModel) -> None:
        self.model = model
        self.statement = build_delete_statement(model)
        mapper: sa.orm.Mapper[Any] = sa.inspect(model)
        keys = [mapper.get_property_by_column(column).key for column in mapper.primary_key]
        self.sort_key = operator.attrgetter(*keys)

    def flush(self, engine: Engine, stop: Callable[[], bool] | None = None) -> int:
        """Send every pending row; return how many. *stop* is asked before each burst."""
        burst_count = get_burst_count(self.model)
        should_stop = stop or _never
        pipelined = burst_count >= PIPELINE_MIN_BURST
        sent = 0
        upcoming: Future[Burst] | None = None
        executor: ThreadPoolExecutor | None = None
        with ExitStack() as stack:
            connections = [_connect(engine, stack)]
            while not should_stop():
                burst = upcoming.result() if upcoming else self._fetch(connections[0], burst_count)
                upcoming = None
                if not burst.rows:
                    burst.rollback()
                    break
                full = len(burst.rows) == burst_count
                if pipelined and full and not should_stop():
                    if executor is None:  # only a backlog is worth a second connection
                        connections.append(_connect(engine, stack))
                        executor = stack.enter_context(ThreadPoolExecutor(1, "signalbus-prefetch"))
                    connections.reverse()
                    upcoming = executor.submit(self._fetch, connections[0], burst_count)
                self._send(burst, upcoming)
                sent += len(burst.rows)
                if not full:
                    break
            if upcoming is not None:
                _roll_back_when_done(upcoming)
        return sent

    @retry_on_deadlock()
    def _fetch(self, connection: Connection, burst_count: int) -> Burst:
        transaction = connection.begin()
        try:
            rows = list(connection.execute(self.statement, {"burst_count": burst_count}))
        except BaseException:
            transaction.rollback()
            raise
        rows.sort(key=self.sort_key)
        return Burst(connection, transaction, rows)

    def _send(self, burst: Burst, upcoming: Future[Burst] | None) -> None:
        try:
            send_rows(self.model, burst.rows)
        except BaseException:
            # The send's error is the one to report: a rollback on a dead connection
            # fails too, and the server rolls the burst back when the connection goes.
            with contextlib.suppress(Exception):
                burst.rollback()
            if upcoming is not None:
                _roll_back_when_done(upcoming)
            raise
        burst.commit()


def _never() -> bool:
    return False


def _connect(engine: Engine, stack: ExitStack) -> Connection:
    connection = stack.enter_context(engine.connect())
    # SKIP LOCKED under REPEATABLE READ would fail on rows another flusher deleted.
    return connection.execution_options(isolation_level="READ COMMITTED")


def _roll_back_when_done(upcoming: Future[Burst]) -> None:
    try:
        burst = upcoming.result()
    except Exception:
        return  # its own transaction was rolled back in _fetch
    with contextlib.suppress(Exception):
        burst.rollback()
