"""How a listener worker tells a database outage from a model's own failure."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy.exc import DBAPIError

from signalbus.worker import _is_connection_error


@pytest.mark.parametrize(
    ("orig", "outage"),
    [
        (psycopg.OperationalError("connection failed: Connection refused"), True),
        (psycopg.errors.AdminShutdown("terminating connection"), True),
        (psycopg.errors.CannotConnectNow("the database system is starting up"), True),
        (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), False),
        (psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"), False),
        (psycopg.errors.SerializationFailure("could not serialize access"), False),
        (psycopg.errors.DeadlockDetected("deadlock detected"), False),
        (psycopg.errors.UndefinedTable("relation does not exist"), False),
    ],
)
def test_only_connection_failures_are_database_outages(orig: psycopg.Error, outage: bool) -> None:
    error = DBAPIError.instance("DELETE ...", {}, orig, psycopg.Error)
    assert _is_connection_error(error) is outage


def test_an_invalidated_connection_is_a_database_outage() -> None:
    error = DBAPIError.instance(
        "DELETE ...", {}, psycopg.DatabaseError("x"), psycopg.Error, connection_invalidated=True
    )
    assert _is_connection_error(error)
