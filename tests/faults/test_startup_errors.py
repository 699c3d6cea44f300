"""``flask signalbus listen`` refuses to start, on one line, when retrying would not help."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.listener_processes import Database, ListenerProcess
from tests.waiting import wait_until

PASSWORD = "s3cr3t-pw"


def refused(listener: ListenerProcess) -> str:
    """The one line of a listener that exited with status 1."""
    assert listener.wait(timeout=30) == 1
    lines = [line for line in listener.output.splitlines() if line.strip()]
    assert len(lines) == 1, listener.output
    assert "Traceback" not in listener.output
    return lines[0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"database": "no_such_database"}, 'database "no_such_database" does not exist'),
        ({"username": "no_such_role"}, 'role "no_such_role" does not exist'),
    ],
)
def test_a_database_that_refuses_for_good_is_one_line(
    spawn: Callable[..., ListenerProcess],
    database_url: str,
    change: dict[str, str],
    message: str,
) -> None:
    url = make_url(database_url).set(password=PASSWORD, **change)
    listener = spawn(LISTENER_DATABASE_URL=url.render_as_string(hide_password=False))
    line = refused(listener)
    assert line.startswith("Error: Cannot connect to postgresql+psycopg://")
    assert message in line
    assert PASSWORD not in line


def test_a_database_that_is_not_postgresql_is_one_line(
    spawn: Callable[..., ListenerProcess], tmp_path: Path
) -> None:
    listener = spawn(LISTENER_DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}")
    line = refused(listener)
    assert line.endswith("is not a PostgreSQL database; signalbus needs PostgreSQL")


def test_a_missing_trigger_function_is_one_line_with_a_hint(
    spawn: Callable[..., ListenerProcess], database: Database
) -> None:
    database.execute("DROP FUNCTION signalbus_notify() CASCADE")
    line = refused(spawn())
    assert "The trigger function signalbus_notify() is missing in" in line
    assert line.endswith("(hint: flask db upgrade, or flask signalbus triggers --install)")


def test_a_missing_quarantine_table_is_a_warning_and_the_rest_works(
    spawn: Callable[..., ListenerProcess], database: Database
) -> None:
    database.execute("DROP TABLE signalbus_quarantine")
    listener = spawn()
    listener.wait_ready()
    assert "The quarantine table signalbus_quarantine is missing in" in listener.output
    database.insert("tick", 1)
    wait_until(lambda: database.sent() == [1], what="a row sent all the same")


def test_an_unreachable_server_is_retried_and_said_once(
    spawn: Callable[..., ListenerProcess], database_url: str
) -> None:
    url = make_url(database_url).set(host="127.0.0.1", port=1)
    listener = spawn("--log-level", "debug", LISTENER_DATABASE_URL=url.render_as_string())
    wait_until(lambda: listener.output.count("Retrying to listen on") >= 3, what="3 retries")
    assert listener.process.poll() is None
    assert listener.output.count("Cannot listen on") == 1
