"""libpq connection settings shared by every PostgreSQL connection signalbus uses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from psycopg import pq
from psycopg.conninfo import make_conninfo

__all__ = ["connection_defaults", "libpq_conninfo"]

#: The libpq version from which ``tcp_user_timeout`` exists (12).
_USER_TIMEOUT_SINCE = 120000


def connection_defaults(url: str | sa.URL, **overrides: Any) -> dict[str, Any]:
    """Return the libpq options signalbus gives connections to *url*, plus *overrides*.

    They make a connection give up on a server that does not answer its
    connection attempt within 10 s, and notice a dead peer within about 30 s,
    even when nothing is being sent (keepalives) or a sent packet is never
    acknowledged (user timeout). What the URL's query sets wins over them.
    """
    options: dict[str, Any] = {
        "connect_timeout": 10,
        "keepalives": 1,
        "keepalives_idle": 15,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }
    if pq.version() >= _USER_TIMEOUT_SINCE:
        options["tcp_user_timeout"] = 15_000
    options.update(overrides)
    return _without(options, sa.make_url(url).query)


def libpq_conninfo(url: str | sa.URL, **options: Any) -> str:
    """Return the libpq connection string of the SQLAlchemy URL *url*, plus *options*.

    ``postgresql+psycopg://user:password@host/db`` becomes a string that
    :func:`psycopg.connect` takes; the URL's query parameters are libpq
    parameters, as for SQLAlchemy's psycopg dialect, and win over *options*.
    """
    libpq_url = sa.make_url(url).set(drivername="postgresql")
    options = _without(options, libpq_url.query)
    return make_conninfo(libpq_url.render_as_string(hide_password=False), **options)


def _without(options: dict[str, Any], keys: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in options.items() if key not in keys}
