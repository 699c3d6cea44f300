"""Checks of the notification triggers' database objects, shared by the trigger tests."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine


def function_exists(engine: Engine) -> bool:
    """Whether the ``signalbus_notify()`` trigger function exists."""
    with engine.connect() as connection:
        query = sa.text("SELECT to_regprocedure('signalbus_notify()') IS NOT NULL")
        return connection.execute(query).scalar_one()


#: The function as signalbus installed it before the wake protocol: it always notifies.
CLASSIC_FUNCTION = """
CREATE OR REPLACE FUNCTION signalbus_notify() RETURNS trigger
LANGUAGE plpgsql AS $function$
BEGIN
    PERFORM pg_notify(
        TG_ARGV[0],
        CASE
            WHEN TG_TABLE_SCHEMA = 'public' THEN TG_TABLE_NAME
            ELSE TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME
        END
    );
    RETURN NULL;
END;
$function$
"""


def install_classic_function(engine: Engine) -> None:
    """Replace the trigger function with the one an older signalbus installed."""
    with engine.begin() as connection:
        connection.exec_driver_sql(CLASSIC_FUNCTION)
