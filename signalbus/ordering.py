"""Ordered signal models: one flusher at a time, across every process, in key order.

A model with ``signalbus_ordered = True`` is flushed only while its flusher
holds the table's ``ordered`` advisory lock (key ``(1935832437 << 32) |
table OID``, a session lock on the flusher's first connection, taken with a
try: nobody waits for it). Another process finding it taken leaves the
model and tries again :data:`ORDERED_RETRY` seconds later, so it takes over
within a second of the holder's end, death included (the lock goes with the
session). Its rows are never isolated (see :mod:`signalbus.isolation`): a
failing row holds the rows behind it.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .burst import run_scalar
from .triggers import load_sql, quoted_name

__all__ = ["ORDERED_RETRY", "OrderedLock"]

#: Seconds after which a flush that found the lock taken tries again.
ORDERED_RETRY = 0.5

_TAKE = sa.text(load_sql("take_ordered"))
_RELEASE = sa.text(load_sql("release_ordered"))


class OrderedLock:
    """The ``ordered`` lock of one signal table."""

    def __init__(self, schema: str | None, table: str) -> None:
        self._parameters = {"table": quoted_name(table, schema)}

    def take(self, connection: Connection, on_driver: bool) -> bool:
        """Take the lock on *connection*; false when another session holds it."""
        return bool(run_scalar(connection, on_driver, _TAKE, self._parameters))

    def release(self, connection: Connection, on_driver: bool) -> None:
        """Give the lock back."""
        run_scalar(connection, on_driver, _RELEASE, self._parameters)
