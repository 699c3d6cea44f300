"""Checks of the notification triggers' database objects, shared by the trigger tests."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine


def function_exists(engine: Engine) -> bool:
    """Whether the ``signalbus_notify()`` trigger function exists."""
    with engine.connect() as connection:
        query = sa.text("SELECT to_regprocedure('signalbus_notify()') IS NOT NULL")
        return connection.execute(query).scalar_one()
