"""Checks of the notification triggers' database objects, shared by the trigger tests."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bench.wake import CLASSIC_FUNCTION


def function_exists(engine: Engine) -> bool:
    """Whether the ``signalbus_notify()`` trigger function exists."""
    with engine.connect() as connection:
        query = sa.text("SELECT to_regprocedure('signalbus_notify()') IS NOT NULL")
        return connection.execute(query).scalar_one()


def install_classic_function(engine: Engine) -> None:
    """Replace the trigger function with the one an older signalbus installed
    (:data:`bench.wake.CLASSIC_FUNCTION`, also the benchmarks' baseline)."""
    with engine.begin() as connection:
        connection.exec_driver_sql(CLASSIC_FUNCTION)
