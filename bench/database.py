"""A throwaway database for one benchmark run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import sqlalchemy as sa
from psycopg import sql

from signalbus.conninfo import libpq_conninfo

#: The server the benchmarks use, unless ``SIGNALBUS_BENCH_DATABASE_URL`` names another.
DEFAULT_SERVER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
#: The environment variable naming another server.
SERVER_URL_VARIABLE = "SIGNALBUS_BENCH_DATABASE_URL"


def server_url() -> str:
    """The benchmark server: ``$SIGNALBUS_BENCH_DATABASE_URL``, else :data:`DEFAULT_SERVER_URL`."""
    return os.environ.get(SERVER_URL_VARIABLE, DEFAULT_SERVER_URL)


@contextmanager
def private_server(directory: Path) -> Iterator[str]:
    """Make a throwaway server in *directory* the benchmark server; yield its URL.

    The embedded server of :mod:`signalbus.embedded` (no fsync), with autovacuum
    off: nothing but the benchmark runs transactions in its databases.
    """
    from signalbus import embedded

    previous = os.environ.get(SERVER_URL_VARIABLE)
    with embedded.start(directory, dbname="postgres", ephemeral=True) as server:
        with psycopg.connect(libpq_conninfo(server.url), autocommit=True) as admin:
            admin.execute("ALTER SYSTEM SET autovacuum = off")
            admin.execute("SELECT pg_reload_conf()")
        os.environ[SERVER_URL_VARIABLE] = server.url
        try:
            yield server.url
        finally:
            if previous is None:
                del os.environ[SERVER_URL_VARIABLE]
            else:
                os.environ[SERVER_URL_VARIABLE] = previous


@contextmanager
def bench_database(name: str) -> Iterator[str]:
    """Create database *name* afresh on the benchmark server; yield its URL; drop it."""
    server = sa.make_url(server_url())
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(libpq_conninfo(server), autocommit=True) as admin:
        admin.execute(drop)
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq_conninfo(server), autocommit=True) as admin:
            admin.execute(drop)
