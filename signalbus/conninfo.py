"""libpq connection settings shared by every PostgreSQL connection signalbus uses."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from psycopg.conninfo import make_conninfo

__all__ = ["TCP_OPTIONS", "libpq_conninfo"]

#: libpq options that notice a dead peer within about 30 s, even when nothing is
#: being sent (keepalives) or a sent packet is never acknowledged (user timeout).
TCP_OPTIONS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 15,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 15_000,
}


def libpq_conninfo(url: str | sa.URL, **options: Any) -> str:
    """Return the libpq connection string of the SQLAlchemy URL *url*, plus *options*.

    ``postgresql+psycopg://user:password@host/db`` becomes a string that
    :func:`psycopg.connect` takes; the URL's query parameters are libpq
    parameters, as for SQLAlchemy's psycopg dialect.
    """
    libpq_url = sa.make_url(url).set(drivername="postgresql")
    return make_conninfo(libpq_url.render_as_string(hide_password=False), **options)
