"""``flask signalbus listen`` as real processes against real PostgreSQL."""

from __future__ import annotations

import collections
import contextlib
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from flask import Flask
from sqlalchemy.engine import make_url

from signalbus.conninfo import libpq_conninfo
from signalbus.listener import Listener
from signalbus.schedule import OUTAGE_PROBE_MAX
from signalbus.triggers import install_trigger
from tests.listener_processes import Database, Producer
from tests.models import SingleSignal, recorder
from tests.models import db as models_db
from tests.proxies import FreezableProxy
from tests.waiting import wait_until

PASSWORD = "s3cr3t-pw"

#: How long the database outage of the probing test lasts: long enough for
#: backoffs that grow with it (to 30 s) to show.
OUTAGE_SECONDS = 20.0


def test_catches_up_says_ready_and_delivers_promptly(spawn, database: Database) -> None:
    database.insert("tick", 1, 5)
    listener = spawn("--sweep-interval", "3600")
    listener.wait_ready()
    [ready] = [line for line in listener.lines if "listening" in line]
    assert "'signalbus'" in ready and "Tick" in ready and "Flaky" in ready
    wait_until(lambda: sorted(database.sent()) == [1, 2, 3, 4, 5], what="the catch-up")
    for row_id in range(6, 56):
        database.insert("tick", row_id)
    wait_until(lambda: len(database.sent()) == 55, timeout=5, what="55 rows sent")
    assert sorted(database.sent()) == list(range(1, 56))
    wait_until(lambda: not database.pending("tick"), what="the last commit")
    assert sum("listening" in line for line in listener.lines) == 1


def test_unknown_signal_name_is_a_usage_error(spawn) -> None:
    listener = spawn("Tick", "Nope")
    assert listener.wait(timeout=30) == 2
    assert "Unknown signal Nope" in listener.output


def test_only_the_named_signals_are_served(spawn, database: Database) -> None:
    listener = spawn("Flaky", "--sweep-interval", "3600")
    listener.wait_ready()
    database.insert("tick", 1)
    database.insert("flaky", 1)
    wait_until(lambda: database.sent("Flaky") == [1], what="the Flaky row")
    assert database.pending("tick") == {1}


def test_reconnects_after_its_backend_is_terminated(spawn, database: Database) -> None:
    listener = spawn("--sweep-interval", "3600")
    listener.wait_ready()
    wait_until(database.listener_pids, what="the listener's backend")
    first_pids = database.listener_pids()
    with Producer(database) as producer:
        wait_until(lambda: len(database.sent()) >= 20, what="a steady stream")
        database.terminate(first_pids)
        listener.wait_for_output("Lost the LISTEN connection")
        listener.wait_for_output("Reconnected")
        wait_until(lambda: database.listener_pids() - first_pids, what="a new backend")
        sent_before = len(database.sent())
        wait_until(lambda: len(database.sent()) >= sent_before + 20, what="the stream again")
    inserted = producer.inserted
    wait_until(lambda: len(database.sent()) >= len(inserted), timeout=5, what="every row")
    assert sorted(database.sent()) == inserted
    wait_until(lambda: not database.pending("tick"), what="the last commit")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stops_within_two_seconds_losing_nothing(spawn, database: Database, signum: int) -> None:
    listener = spawn()
    listener.wait_ready()
    with Producer(database, per_transaction=20) as producer:
        wait_until(lambda: len(database.sent()) >= 200, what="a steady stream")
        started = time.monotonic()
        listener.process.send_signal(signum)
        status = listener.wait(timeout=5)
        elapsed = time.monotonic() - started
    inserted = producer.inserted
    assert status == 0, listener.output
    assert elapsed < 2.0
    sent = database.sent()
    assert len(sent) == len(set(sent))
    assert set(sent) | database.pending("tick") == set(inserted)
    assert "Traceback" not in listener.output


@pytest.fixture
def silent_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """A TCP server on a free port that accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # closed at teardown
            while True:
                accepted.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1], accepted
    server.close()
    for connection in accepted:
        connection.close()


def test_stops_within_two_seconds_while_connecting_to_a_silent_server(
    spawn, silent_server: tuple[int, list[socket.socket]]
) -> None:
    port, accepted = silent_server
    listener = spawn(LISTENER_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:{port}/x")
    wait_until(lambda: accepted, what="the listener to connect")
    started = time.monotonic()
    listener.process.send_signal(signal.SIGTERM)
    status = listener.wait(timeout=10)
    elapsed = time.monotonic() - started
    assert status == 0, listener.output
    assert elapsed < 2.0
    assert "Traceback" not in listener.output


def test_a_new_listener_delivers_what_a_killed_one_left(spawn, database: Database) -> None:
    listener = spawn()
    listener.wait_ready()
    with Producer(database, per_transaction=20) as producer:
        wait_until(lambda: len(database.sent()) >= 200, what="a steady stream")
        listener.process.send_signal(signal.SIGKILL)
        listener.wait(timeout=5)
        killed_at = producer.next_id
        wait_until(lambda: producer.next_id > killed_at + 100, what="rows after the kill")
        spawn().wait_ready()
        wait_until(lambda: len(database.sent()) > killed_at + 200, what="the new listener")
    inserted = producer.inserted
    wait_until(lambda: set(database.sent()) >= set(inserted), what="every row at least once")
    wait_until(lambda: not database.pending("tick"), what="the last commit")


def test_a_failing_signal_does_not_hold_up_the_others(
    spawn, database: Database, env: dict[str, str]
) -> None:
    fail_file = Path(env["LISTENER_FAIL_FILE"])
    fail_file.touch()
    listener = spawn("--sweep-interval", "3600")
    listener.wait_ready()
    for row_id in (1, 2, 3):
        database.insert("flaky", row_id)
    listener.wait_for_output("Sending Flaky signals failed")
    assert "the broker refused a Flaky message" in listener.output
    for row_id in range(1, 21):
        database.insert("tick", row_id)
        wait_until(lambda n=row_id: len(database.sent()) == n, timeout=1, what=f"tick {row_id}")
    assert database.pending("flaky") == {1, 2, 3}
    assert database.sent("Flaky") == []
    fail_file.unlink()
    wait_until(lambda: sorted(database.sent("Flaky")) == [1, 2, 3], timeout=40, what="the retry")
    wait_until(lambda: not database.pending("flaky"), what="the last commit")
    listener.wait_for_output("Sending Flaky signals works again")


BAD_PAYLOADS = ["garbage", "no_such_table", "public.tick", "x" * 7999, "x'; drop table y; --"]


def test_bad_payloads_are_logged_and_ignored(spawn, database: Database) -> None:
    listener = spawn("--sweep-interval", "3600")
    listener.wait_ready()
    for payload in BAD_PAYLOADS:
        database.execute("SELECT pg_notify('signalbus', %s)", (payload,))
    wait_until(
        lambda: listener.output.count("unknown table") == len(BAD_PAYLOADS),
        what="a warning per bad payload",
    )
    assert "(7999 characters)" in listener.output
    assert "x" * 100 not in listener.output
    assert repr(BAD_PAYLOADS[-1]) in listener.output
    database.insert("tick", 1)
    wait_until(lambda: database.sent() == [1], what="a row after the bad payloads")
    assert listener.process.poll() is None


def test_two_listeners_send_each_row_exactly_once(spawn, database: Database) -> None:
    listeners = [spawn(), spawn()]
    for listener in listeners:
        listener.wait_ready()
    total, step = 10_000, 50
    for first in range(1, total + 1, step):
        database.insert("tick", first, first + step - 1)
    wait_until(lambda: len(database.sent()) >= total, timeout=30, what="every row")
    counts = collections.Counter(database.sent())
    assert set(counts) == set(range(1, total + 1))
    assert set(counts.values()) == {1}
    wait_until(lambda: not database.pending("tick"), what="the last commit")
    assert len(database.senders()) == 2


def test_password_never_logged_even_across_reconnects(
    spawn, database: Database, database_url: str
) -> None:
    url = make_url(database_url).set(password=PASSWORD).render_as_string(hide_password=False)
    listener = spawn("--sweep-interval", "3600", LISTENER_DATABASE_URL=url)
    listener.wait_ready()
    database.insert("tick", 1)
    wait_until(lambda: database.sent() == [1], what="the first row")
    # Sent is not committed: cut before the commit, the row would be sent again.
    wait_until(lambda: not database.pending("tick"), what="the first row's commit")
    # As after a server restart: the LISTEN connection and the pooled ones are gone.
    database.terminate(database.other_backends())
    listener.wait_for_output("Reconnected")
    database.insert("tick", 2)
    wait_until(lambda: database.sent() == [1, 2], what="a row after the reconnect")
    assert "***" in listener.output
    assert PASSWORD not in listener.output
    assert "Sending Tick signals failed" not in listener.output


def through(proxy: FreezableProxy, database_url: str) -> str:
    """The test database's URL, leading through *proxy*."""
    return make_url(database_url).set(host="127.0.0.1", port=proxy.port).render_as_string(False)


def test_a_half_open_connection_is_found_by_the_probe(
    spawn, database: Database, database_url: str, proxy: FreezableProxy
) -> None:
    listener = spawn(
        "--sweep-interval",
        "3600",
        LISTENER_DATABASE_URL=through(proxy, database_url),
        LISTENER_PROBE_INTERVAL="1",
    )
    listener.wait_ready()
    query = (
        "SELECT client_port FROM pg_stat_activity "
        "WHERE datname = %s AND application_name = 'signalbus-listener'"
    )
    [(client_port,)] = database.execute(query, (database.name,))
    proxy.freeze(client_port)
    listener.wait_for_output("no answer to a probe within 1 s", timeout=10)
    listener.wait_for_output("Reconnected")
    database.insert("tick", 1)
    wait_until(lambda: database.sent() == [1], timeout=2, what="a row after the reconnect")


def test_a_long_database_outage_is_probed_at_short_intervals(
    spawn, database: Database, database_url: str, proxy: FreezableProxy
) -> None:
    url = through(proxy, database_url)
    listener = spawn("--sweep-interval", "3600", "--log-level", "debug", LISTENER_DATABASE_URL=url)
    listener.wait_ready()
    database.insert("tick", 1)
    wait_until(lambda: database.sent() == [1], what="a row before the outage")
    # Sent is not committed: cut before the commit, the row would be sent again.
    wait_until(lambda: not database.pending("tick"), what="its commit")
    proxy.go_down()
    listener.wait_for_output("Cannot listen on")
    database.insert("tick", 2, 5)  # their notification is lost with the connection
    time.sleep(OUTAGE_SECONDS)  # the outage itself: long enough for backoffs to grow
    proxy.come_up()
    wait_until(
        lambda: sorted(database.sent()) == [1, 2, 3, 4, 5],
        what=lambda: f"the catch-up; sent {database.sent()}; the listener said:\n{listener.output}",
    )
    assert listener.output.count("Cannot listen on") == 1  # said once, retried quietly
    retry = re.compile(r"Retrying to listen on .* in ([\d.]+) s")
    delays = [float(delay) for delay in retry.findall(listener.output)]
    assert len(delays) >= OUTAGE_SECONDS / OUTAGE_PROBE_MAX / 2
    assert max(delays) <= OUTAGE_PROBE_MAX, listener.output


def test_sweeps_find_rows_whose_notification_was_lost(spawn, database: Database) -> None:
    listener = spawn("--sweep-interval", "1")
    listener.wait_ready()
    with database.connection.transaction():
        database.execute("SET LOCAL session_replication_role = replica")  # no trigger fires
        database.insert("tick", 1, 3)
    wait_until(lambda: sorted(database.sent()) == [1, 2, 3], timeout=5, what="the sweep")


def test_survives_a_database_outage(spawn, database: Database, database_url: str) -> None:
    url = make_url(database_url).set(password=PASSWORD).render_as_string(hide_password=False)
    listener = spawn("--sweep-interval", "1", LISTENER_DATABASE_URL=url)
    listener.wait_ready()
    allow = f'ALTER DATABASE "{database.name}" ALLOW_CONNECTIONS %s'
    admin_conninfo = libpq_conninfo(database_url, dbname="postgres")
    with psycopg.connect(admin_conninfo, autocommit=True) as admin:
        admin.execute((allow % "false").encode())
        try:
            database.terminate(database.other_backends())
            listener.wait_for_output("Cannot listen on")
            listener.wait_for_output("Sweeping failed")
            database.insert("tick", 1, 10)
        finally:
            admin.execute((allow % "true").encode())
    listener.wait_for_output("Reconnected", timeout=40)
    wait_until(lambda: sorted(database.sent()) == list(range(1, 11)), what="the catch-up")
    listener.wait_for_output("Sweeping works again")
    database.insert("tick", 11)
    wait_until(lambda: len(database.sent()) == 11, timeout=2, what="a row after the outage")
    assert PASSWORD not in listener.output


def test_listener_in_a_thread_is_ready_sends_and_stops(app: Flask) -> None:
    """The Listener class on its own: ``ready`` once listening, ``stop()`` from any thread."""
    with app.app_context():
        with models_db.engine.begin() as connection:
            install_trigger(connection, "single_signal")
        listener = Listener(models_db.signalbus, [SingleSignal], sweep_interval=3600)
    thread = threading.Thread(target=listener.run)
    thread.start()
    try:
        assert listener.ready.wait(10)
        with app.app_context():
            models_db.session.add(SingleSignal(text="hi"))
            models_db.session.commit()
        wait_until(lambda: len(recorder.sent) == 1, what="the row to be sent")
    finally:
        listener.stop()
        thread.join(5)
    assert not thread.is_alive()
    assert recorder.sent[0].text == "hi"
