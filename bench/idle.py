"""Counting the transactions a database runs while idle (``pg_stat_database``)."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg

#: (pid, backend type, application name)
Backend = tuple[int, str, str]


def count_transactions(server_conninfo: str, database: str) -> int:
    """Return ``xact_commit + xact_rollback`` of *database*, read from another database."""
    with psycopg.connect(server_conninfo, autocommit=True) as connection:
        row = connection.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (database,),
        ).fetchone()
    assert row is not None
    return row[0]


def measure_idle(
    server_conninfo: str,
    database: str,
    seconds: float,
    listeners: Callable[[Backend], bool] = lambda backend: False,
) -> int:
    """Count the transactions *database* runs in *seconds*, after the stats settle.

    A window in which another backend than the listener's (an autovacuum
    worker, another client) appears in the database is measured again, up to
    three windows: its transactions would count in the same totals. The
    listener's backends are those connected at the start, and those that
    *listeners* accepts.
    """
    time.sleep(11)  # an idle backend reports its counts within 10 s
    with psycopg.connect(server_conninfo, autocommit=True) as connection:
        listener_backends = backends(connection, database)
        for _ in range(3):
            before = count_transactions(server_conninfo, database)
            seen = watch_backends(connection, database, seconds)
            count = count_transactions(server_conninfo, database) - before
            others = sorted(b for b in seen - listener_backends if not listeners(b))
            if not others:
                return count
            print(f"(other backends {others} ran {count} transactions in the idle window)")
    return count


def backends(connection: psycopg.Connection, database: str) -> set[Backend]:
    """Return the backends connected to *database*."""
    query = "SELECT pid, backend_type, application_name FROM pg_stat_activity WHERE datname = %s"
    return set(connection.execute(query, (database,)).fetchall())


def watch_backends(connection: psycopg.Connection, database: str, seconds: float) -> set[Backend]:
    """Return the backends seen in *database* during the next *seconds*, polling at 20 Hz."""
    seen: set[Backend] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen |= backends(connection, database)
        time.sleep(0.05)
    return seen
