"""Tests of signalbus.embedded and of the PostgreSQL test fixtures (tests/postgres_fixtures.py)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import stat
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from signalbus import embedded
from signalbus.conninfo import libpq_conninfo
from tests.postgres_fixtures import PgServer, embedded_pg_server

IS_ROOT = os.geteuid() == 0


def _modes(paths: list[Path]) -> dict[Path, tuple[int, int, int]]:
    """(mode, uid, gid) of each path."""
    result = {}
    for path in paths:
        st = path.stat()
        result[path] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return result


def _select_1(pg: embedded.EmbeddedPostgres) -> tuple[object, ...] | None:
    with psycopg.connect(
        host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname=pg.dbname
    ) as conn:
        return conn.execute("SELECT 1, current_database()").fetchone()


def _connect_without_password(pg: embedded.EmbeddedPostgres) -> None:
    """Connect as the superuser with no password at all (not from the environment or ~/.pgpass)."""
    psycopg.connect(
        host=pg.host,
        port=pg.port,
        user=pg.user,
        password="",
        passfile=os.devnull,
        dbname="postgres",
        connect_timeout=5,
    ).close()


def _assert_password_required(pg: embedded.EmbeddedPostgres) -> None:
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        _connect_without_password(pg)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host=pg.host, port=pg.port, user=pg.user, password="wrong", dbname="postgres"
        ).close()


def _password_file(data_dir: Path) -> Path:
    path = data_dir / "password"
    st = path.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, os.geteuid())
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A not-yet-existing data dir; any server left running on it is stopped afterwards."""
    path = tmp_path / "nested" / "postgres"
    yield path
    if (path / "pgdata" / "postmaster.pid").exists():
        embedded.start(path).stop()


def test_start_select_stop_then_warm_restart(data_dir: Path) -> None:
    t0 = time.perf_counter()
    pg = embedded.start(data_dir, ephemeral=True)
    cold = time.perf_counter() - t0
    assert pg.started and pg.is_running()
    assert _select_1(pg) == (1, "signalbus")
    url = make_url(pg.url)
    assert (url.drivername, url.host, url.port, url.username, url.database) == (
        "postgresql+psycopg",
        "127.0.0.1",
        pg.port,
        "postgres",
        "signalbus",
    )
    assert pg.password and len(pg.password) >= 40 and url.password == pg.password
    assert _password_file(data_dir).read_text().strip() == pg.password
    assert pg.display_url == url.render_as_string(hide_password=True)
    assert pg.password not in pg.display_url + repr(pg)
    _assert_password_required(pg)
    hba = (pg.pgdata / "pg_hba.conf").read_text()
    assert "trust" not in "".join(ln.split("#")[0] for ln in hba.splitlines())
    assert [p.name for p in data_dir.iterdir() if "initdb" in p.name] == []  # --pwfile removed

    again = embedded.start(data_dir)  # attaches to the running server
    assert not again.started and again.port == pg.port and again.password == pg.password

    pg.stop()
    assert not pg.is_running()
    assert not (pg.pgdata / "postmaster.pid").exists()
    pg.stop()  # idempotent

    version = (pg.pgdata / "PG_VERSION").stat()
    t0 = time.perf_counter()
    with embedded.start(data_dir) as warm:
        warm_time = time.perf_counter() - t0
        assert warm.started and warm.password == pg.password  # read back from the file
        assert _select_1(warm) == (1, "signalbus")
        _assert_password_required(warm)
    assert not warm.is_running()
    after = (pg.pgdata / "PG_VERSION").stat()
    assert (after.st_ino, after.st_mtime_ns) == (version.st_ino, version.st_mtime_ns)  # no initdb
    assert "database system is ready" in warm.log_path.read_text()
    print(f"embedded start: cold {cold:.2f}s, warm {warm_time:.2f}s")
    assert warm_time < cold


def test_start_again_restarts_on_the_same_port_with_the_same_data(data_dir: Path) -> None:
    pg = embedded.start(data_dir, ephemeral=True)
    with psycopg.connect(libpq_conninfo(pg.url), autocommit=True) as connection:
        connection.execute("CREATE TABLE kept (id int)")
    pg.stop()
    pg.start_again(ephemeral=True)
    pg.start_again()  # idempotent: it runs
    assert pg.is_running()
    with psycopg.connect(libpq_conninfo(pg.url), autocommit=True) as connection:
        assert connection.execute("SELECT to_regclass('kept') IS NOT NULL").fetchone() == (True,)
    pg.stop()


def test_permissions_of_foreign_directories_are_unchanged(data_dir: Path) -> None:
    bin_dir = embedded._default_bin_dir()
    watched = sorted(
        {
            *data_dir.parent.parents,
            *bin_dir.parents,
            bin_dir,
            bin_dir.parent / "lib",
            Path.home(),
            Path("/tmp"),
        }
    )
    before = _modes(watched)

    pg = embedded.start(data_dir, ephemeral=True)
    try:
        assert _modes(watched) == before
        # What this module created: private dirs; only PGDATA handed to the server account.
        assert _modes([data_dir])[data_dir][:2] == (0o700, os.geteuid())
        # The password stays with the invoking user (the client side): the server account
        # (when root switches to one) can neither read it nor traverse data_dir.
        password = _password_file(data_dir).stat()
        if IS_ROOT:
            assert pg._account.ids is not None and password.st_uid == 0 != pg._account.ids[0]
        pgdata = pg.pgdata.stat()
        assert stat.S_IMODE(pgdata.st_mode) == 0o700
        assert pgdata.st_uid == (pg._account.ids[0] if pg._account.ids else os.geteuid())
        pid = int((pg.pgdata / "postmaster.pid").read_text().split()[0])
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        if IS_ROOT:
            assert pg.os_user == "signalbus-postgres"
            assert "0" not in status["Uid"].split() and "0" not in status["Gid"].split()
            assert status["Groups"].split() == []
    finally:
        pg.stop()
    assert _modes(watched) == before


def test_existing_pgdata_not_owned_by_server_account_is_refused(tmp_path: Path) -> None:
    if not IS_ROOT:
        pytest.skip("only relevant when running as root")
    (tmp_path / "pgdata").mkdir(mode=0o700)
    with pytest.raises(embedded.EmbeddedPostgresError, match="refusing to chown"):
        embedded.start(tmp_path)
    assert (tmp_path / "pgdata").stat().st_uid == 0


def _start_in_child(data_dir: Path) -> tuple[bool, int]:
    pg = embedded.start(data_dir, ephemeral=True)
    return pg.started, pg.port


def test_concurrent_starts_share_one_server(data_dir: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(4, mp_context=ctx) as pool:
        results = list(pool.map(_start_in_child, [data_dir] * 4))
    assert sorted(started for started, _ in results) == [False, False, False, True]
    assert len({port for _, port in results}) == 1


def test_stale_pidfile_with_reused_pid_is_ignored(data_dir: Path) -> None:
    embedded.start(data_dir, ephemeral=True).stop()
    pidfile = data_dir / "pgdata" / "postmaster.pid"
    # As after a container restart: the recorded pid now belongs to another program (us).
    pidfile.write_text(f"{os.getpid()}\n{data_dir}\n0\n5432\n\n127.0.0.1\n0 0\nready\n")
    pg = embedded.start(data_dir)
    assert pg.started and pg.port != 5432
    assert _select_1(pg) == (1, "signalbus")
    pg.stop()


def test_missing_password_file_is_a_clear_error(data_dir: Path) -> None:
    embedded.start(data_dir, ephemeral=True).stop()
    (data_dir / "password").unlink()
    with pytest.raises(embedded.EmbeddedPostgresError, match=r"password is missing.*delete"):
        embedded.start(data_dir)
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()  # not started without it


def test_server_accepting_connections_without_password_is_refused(data_dir: Path) -> None:
    embedded.start(data_dir, ephemeral=True).stop()
    hba = data_dir / "pgdata" / "pg_hba.conf"
    hba.write_text(hba.read_text().replace("scram-sha-256", "trust"))
    with pytest.raises(embedded.EmbeddedPostgresError, match="accepts connections without pass"):
        embedded.start(data_dir)
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()  # the server it started: stopped


def test_wrong_password_error_does_not_show_it(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    embedded.start(data_dir, ephemeral=True).stop()
    secret = "not-the-right-one-" + "x" * 20
    (data_dir / "password").write_text(secret)
    with (
        caplog.at_level(logging.DEBUG, logger="signalbus.embedded"),
        pytest.raises(embedded.EmbeddedPostgresError) as excinfo,
    ):
        embedded.start(data_dir)
    message = str(excinfo.value)
    assert "password authentication failed" in message
    assert "postgres:***@127.0.0.1" in message
    assert secret not in message and secret not in caplog.text
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__


# --- postgres_fixtures -----------------------------------------------------------------------


def test_embedded_fallback_server_carries_the_password(tmp_path: Path) -> None:
    with embedded_pg_server(tmp_path / "postgres") as server:
        assert server.password and server.dbname == "postgres"
        assert make_url(server.url()).password == server.password
        with server.connect() as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


_seen: list[str] = []
_left_open: list[psycopg.Connection] = []


@pytest.mark.parametrize("run", [1, 2])
def test_database_url_is_a_fresh_database(database_url: str, run: int) -> None:
    url = make_url(database_url)
    assert url.drivername == "postgresql+psycopg"
    assert url.database not in _seen
    conn = psycopg.connect(libpq_conninfo(url))
    assert conn.execute("SELECT count(*) FROM pg_class WHERE relname = 'leftover'").fetchone() == (
        0,
    )
    conn.execute("CREATE TABLE leftover (x int)")
    conn.commit()
    _left_open.append(conn)  # the janitor must terminate it to drop the database
    _seen.append(url.database)


def test_databases_of_previous_tests_were_dropped(pg_server: PgServer) -> None:
    assert _seen, "runs after test_database_url_is_a_fresh_database, in the same module"
    with pg_server.connect() as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = ANY(%s)", (_seen,)
        ).fetchall()
    assert rows == []
    for conn in _left_open:  # terminated by the janitor
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        conn.close()
