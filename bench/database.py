"""A throwaway database for one benchmark run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import sqlalchemy as sa
from psycopg import sql

from signalbus.conninfo import libpq_conninfo

#: The server the benchmarks use, unless ``SIGNALBUS_BENCH_DATABASE_URL`` names another.
DEFAULT_SERVER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@contextmanager
def bench_database(name: str) -> Iterator[str]:
    """Create database *name* afresh on the benchmark server; yield its URL; drop it."""
    server = sa.make_url(os.environ.get("SIGNALBUS_BENCH_DATABASE_URL", DEFAULT_SERVER_URL))
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(libpq_conninfo(server), autocommit=True) as admin:
        admin.execute(drop)
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq_conninfo(server), autocommit=True) as admin:
            admin.execute(drop)
