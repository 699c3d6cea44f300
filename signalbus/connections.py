"""The database connections a flush runs its bursts on.

A flush needs one connection, and a second one once a backlog shows (the next
burst is deleted on it while the current one is being sent), with one thread
to run that prefetch. Two owners provide them:

- :class:`PooledConnections` checks them out of the engine's pool for one
  flush and gives them back after it: ``flushmany`` in an app's process.
- :class:`OwnedConnections` belongs to one listener worker for its lifetime.
  Its connections are detached from the pool, so that the listener's
  connections are bounded by its workers (two each per database) and never
  wait for a pool that the app, or the worker's own other burst, exhausted.
  Being its own, it sets ``synchronous_commit`` once per session instead of
  once per burst.

Every connection runs at ``READ COMMITTED``: ``SKIP LOCKED`` under
``REPEATABLE READ`` would fail on rows another flusher deleted.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.engine import Connection, Engine

__all__ = [
    "ASYNC_COMMIT",
    "BurstConnections",
    "OwnedConnections",
    "PooledConnections",
    "runs_on_driver",
]

#: Losing a burst's commit in a crash only sends its rows again, which
#: at-least-once allows; not waiting for the WAL flush shortens every burst.
ASYNC_COMMIT = "synchronous_commit TO OFF"


class BurstConnections:
    """Up to two connections to one database, and the thread prefetching on the second."""

    #: Whether each burst must set :data:`ASYNC_COMMIT` itself (``SET LOCAL``).
    per_burst_settings: bool

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: Whether bursts run on the psycopg connections directly: see :func:`runs_on_driver`.
        self.on_driver = False
        self._connections: list[Connection] = []
        self._prefetcher: ThreadPoolExecutor | None = None

    def get(self, index: int) -> Connection:
        """Return connection *index* (0 or 1), opening it on first use."""
        while len(self._connections) <= index:
            connection = self._open()
            if not self._connections:
                self.on_driver = runs_on_driver(connection)
            self._connections.append(connection)
        return self._connections[index]

    def prefetcher(self) -> ThreadPoolExecutor:
        """Return the one thread that deletes the next burst ahead of time."""
        if self._prefetcher is None:
            self._prefetcher = ThreadPoolExecutor(1, "signalbus-prefetch")
        return self._prefetcher

    def close(self, end_sessions: bool = False) -> None:
        """Close (or give back) the connections and stop the prefetching thread.

        With *end_sessions*, pooled connections are not given back but closed
        for good: their sessions end, and the session locks they hold go.
        """
        if self._prefetcher is not None:
            self._prefetcher.shutdown()
            self._prefetcher = None
        connections, self._connections = self._connections, []
        for connection in connections:
            with contextlib.suppress(Exception):  # a dead connection is closed anyway
                if end_sessions:
                    connection.invalidate()
                connection.close()

    def _open(self) -> Connection:
        connection = self.engine.connect()
        return connection.execution_options(isolation_level="READ COMMITTED")


class PooledConnections(BurstConnections):
    """Connections checked out of the engine's pool for one flush; a context manager."""

    per_burst_settings = True

    def __enter__(self) -> PooledConnections:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class OwnedConnections(BurstConnections):
    """Connections of one worker, detached from the engine's pool, kept across flushes.

    After an error that may have broken them, :meth:`close` them: the next
    :meth:`get` opens new ones.
    """

    per_burst_settings = False

    def _open(self) -> Connection:
        connection = super()._open()
        # Detached, it no longer counts against the pool, and closing it closes
        # it: the session setting below never reaches the app's connections.
        connection.detach()
        try:
            connection.exec_driver_sql(f"SET {ASYNC_COMMIT}")
            connection.commit()
        except BaseException:
            connection.close()
            raise
        return connection


def runs_on_driver(connection: Connection) -> bool:
    """Tell whether bursts may skip SQLAlchemy's execution layer on *connection*.

    They may on the synchronous psycopg driver, unless the engine echoes its
    statements or has execution event listeners (query logging, tracing),
    which must see every statement. Decided when a flush's first connection
    opens.
    """
    dispatch = connection.dispatch
    return (
        connection.dialect.driver == "psycopg"
        and not connection.engine.echo
        and not (dispatch.before_execute or dispatch.after_execute)
        and not (dispatch.before_cursor_execute or dispatch.after_cursor_execute)
    )
