"""Pytest plugin: a PostgreSQL server for the test session and a fresh database per test.

Server selection (session fixture ``pg_server``), first that applies:

1. ``$SIGNALBUS_TEST_DATABASE_URL`` (e.g. ``postgresql://root@127.0.0.1:5432/test``); its
   database is used as the maintenance database (to create/drop the test databases);
2. a server on ``127.0.0.1:5432`` accepting user ``postgres`` without a password;
3. the embedded server (:mod:`signalbus.embedded`) in a temporary directory, stopped and removed
   at the end of the session (it requires its superuser's password, which ``PgServer`` carries).

Databases go through pytest-postgresql: ``pg_template`` is a ``postgresql_noproc`` fixture
plugged into ``pg_server`` (``depends_on``); it creates a session template database (load schema
into it with ``--postgresql-load`` / the ``postgresql_load`` ini option).  ``database_url``
clones that template per test with a ``DatabaseJanitor`` under a unique name, and drops it
afterwards (the janitor first forbids new connections and terminates open ones).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pytest_postgresql import factories
from pytest_postgresql.executors import NoopExecutor
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy.engine import URL, make_url

ENV_VAR = "SIGNALBUS_TEST_DATABASE_URL"
# Unique per process (xdist workers import this module separately; xdist also appends the
# worker id), so concurrent sessions on a shared server never collide.
SESSION_DBNAME = f"sbtest_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class PgServer:
    """Connection details of the PostgreSQL server used by the tests."""

    host: str
    port: int
    user: str
    password: str | None = None
    dbname: str = "postgres"
    # Attributes read by pytest-postgresql's ``postgresql_noproc(depends_on=...)``:
    options: str = ""
    template_dbname: str | None = None

    @property
    def maintenance_dbname(self) -> str:
        """Database the janitor connects to in order to create/drop databases."""
        return self.dbname

    def connect(self, **options: Any) -> psycopg.Connection:
        """Connect to the maintenance database; *options* go to :func:`psycopg.connect`."""
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=self.dbname,
            **options,
        )

    def url(self, dbname: str | None = None) -> str:
        """SQLAlchemy URL (``postgresql+psycopg://...``) of ``dbname`` on this server."""
        return _sqlalchemy_url(
            self.host, self.port, self.user, self.password, dbname or self.dbname
        )


LOCAL_SERVER = PgServer(host="127.0.0.1", port=5432, user="postgres")


def server_from_url(url: str) -> PgServer:
    """Parse a ``postgresql://user[:password]@host[:port]/dbname`` URL."""
    parsed = make_url(url)
    return PgServer(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username or "postgres",
        password=parsed.password,
        dbname=parsed.database or "postgres",
    )


def server_answers(server: PgServer, timeout: int = 2) -> bool:
    """Whether ``server`` accepts a connection."""
    try:
        server.connect(connect_timeout=timeout).close()
    except psycopg.Error:
        return False
    return True


def select_pg_server(
    env: Mapping[str, str], probe: Callable[[PgServer], bool] = server_answers
) -> PgServer | None:
    """The configured or local server to use, or ``None`` to fall back to the embedded one."""
    if env.get(ENV_VAR):
        return server_from_url(env[ENV_VAR])
    if probe(LOCAL_SERVER):
        return LOCAL_SERVER
    return None


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The PostgreSQL server for this test session (see module docstring)."""
    server = select_pg_server(os.environ)
    if server is not None:
        yield server
        return
    tmp = Path(tempfile.mkdtemp(prefix="signalbus-pg-"))
    try:
        with embedded_pg_server(tmp / "postgres") as server:
            yield server
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def embedded_pg_server(data_dir: Path) -> Iterator[PgServer]:
    """An ephemeral embedded server in ``data_dir`` (stopped on exit), with its password."""
    from signalbus import embedded

    with embedded.start(data_dir, dbname="postgres", ephemeral=True) as pg:
        yield PgServer(pg.host, pg.port, pg.user, pg.password, dbname="postgres")


pg_template = factories.postgresql_noproc(dbname=SESSION_DBNAME, depends_on="pg_server")
"""pytest-postgresql noproc fixture; its ``template_dbname`` is created for the session."""


@pytest.fixture
def database_url(pg_template: NoopExecutor) -> Iterator[str]:
    """SQLAlchemy URL of a fresh database (cloned from the session template), dropped after."""
    proc = pg_template
    janitor = DatabaseJanitor(
        user=proc.user,
        password=proc.password,
        host=proc.host,
        port=proc.port,
        dbname=f"{proc.dbname}_{uuid.uuid4().hex[:12]}",
        template_dbname=proc.template_dbname,
        maintenance_dbname=proc.maintenance_dbname,
    )
    with janitor:
        yield _sqlalchemy_url(proc.host, proc.port, proc.user, proc.password, janitor.dbname)


def _sqlalchemy_url(host: str, port: int, user: str, password: str | None, dbname: str) -> str:
    url = URL.create("postgresql+psycopg", user, password, host, int(port), dbname)
    return url.render_as_string(hide_password=False)
