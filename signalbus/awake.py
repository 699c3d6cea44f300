"""The listener's side of the wake protocol: being awake for a table, and falling asleep.

While a listener holds a table's ``awake`` lock, the trigger function skips
the notification (see the top of ``sql/notify_function.sql``): the listener
promises to look at the table again before it sleeps. A flush of the
listener takes the lock, after sending the burst, once its bursts show that
rows come faster than notifications are worth (:data:`AWAKE_MIN_ROWS` rows). While it
owes a look (it holds the lock, or writers skipped since the last look), a
flush goes on until a burst finds no row, and keeps the promise then: it
gives the lock back, waits until the writers that skipped their
notification have ended (:meth:`Awake.skipped_writers_done`, asked again a
moment later while some still run), and flushes once more.

A flush holds the lock only while it runs, on the connection of its worker
that took it; every flush that ends gives it back, and a connection that
closes releases it with its session.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .backoff import Backoff
from .burst import run_scalar
from .triggers import load_sql, quoted_name

__all__ = ["AWAKE_MIN_ROWS", "RECHECK_MAX", "Awake"]

#: Rows a burst must bring for its flush to take the ``awake`` lock (after sending
#: them): a few rows at a time, notifications cost writers little, and taking and
#: giving back the lock would cost the listener more, and its rows latency.
AWAKE_MIN_ROWS = 4

#: Seconds at most between two looks at writers that skipped and still run.
RECHECK_MAX = 1.0

_WAKE_UP = sa.text(load_sql("wake_up"))
_FALL_ASLEEP = sa.text(load_sql("fall_asleep"))
_SKIPPED_WRITERS = sa.text(load_sql("skipped_writers"))


class Awake:
    """The wake protocol's state for one signal table, shared by the flushes of its model."""

    def __init__(self, schema: str | None, table: str) -> None:
        self._parameters = {"table": quoted_name(table, schema)}
        #: The connection holding the ``awake`` lock, while a flush holds it.
        self._holder: tuple[Connection, bool] | None = None
        #: Whether writers may have skipped their notification since the last final look.
        self.owes_look = False
        self._recheck = Backoff(0.001, RECHECK_MAX)

    def wake_up(self, connection: Connection, on_driver: bool) -> None:
        """Take the ``awake`` lock on *connection* (between two bursts), unless held.

        A session lock: it outlives the transactions of the bursts to come.
        Another listener holding it is awake already; this flush then just flushes.
        """
        if self._holder is None and run_scalar(connection, on_driver, _WAKE_UP, self._parameters):
            self._holder = (connection, on_driver)
            self.owes_look = True

    def fall_asleep(self) -> None:
        """Give the ``awake`` lock back, if held: writers notify again from now on."""
        holder, self._holder = self._holder, None
        if holder is not None:
            run_scalar(*holder, _FALL_ASLEEP, self._parameters)

    def skipped_writers_done(self, connection: Connection, on_driver: bool) -> bool:
        """Tell whether every writer that skipped its notification has ended.

        Call it after :meth:`fall_asleep`. When true, the flush must look at the
        table once more (a statement starting after this one); when false,
        :meth:`recheck_delay` tells when to ask again.
        """
        running = run_scalar(connection, on_driver, _SKIPPED_WRITERS, self._parameters)
        if running:
            return False
        self.owes_look = False
        self._recheck.reset()
        return True

    def recheck_delay(self) -> float:
        """Seconds until writers that skipped and still run should be looked at again."""
        return self._recheck.next()
