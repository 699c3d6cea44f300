"""The two wake-ups the benchmarks compare: the wake protocol, and notifying every time.

* ``new``: the current trigger function (``sql/notify_function.sql``) and a
  listener taking part in the wake protocol: writers skip their NOTIFY while
  it is awake;
* ``classic``: the function as signalbus installed it before the protocol
  (:data:`CLASSIC_FUNCTION`, a ``pg_notify`` on every transaction) and a
  listener with ``SIGNALBUS_ALWAYS_NOTIFY``: the baseline.
"""

from __future__ import annotations

import psycopg

__all__ = ["CLASSIC_FUNCTION", "PROTOCOLS", "install_classic_function", "listener_environment"]

PROTOCOLS = ("new", "classic")

#: The trigger function before the wake protocol: it notifies on every transaction.
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


def install_classic_function(conninfo: str) -> None:
    """Replace the database's trigger function with :data:`CLASSIC_FUNCTION`."""
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(CLASSIC_FUNCTION)


def listener_environment(protocol: str) -> dict[str, str]:
    """The environment variables of a ``refapp`` listener for *protocol*."""
    return {"SIGNALBUS_ALWAYS_NOTIFY": "true" if protocol == "classic" else "false"}
