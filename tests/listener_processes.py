"""Listener processes and the database they serve, for the tests that spawn listeners."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from signalbus.conninfo import libpq_conninfo
from tests.processes import FLASK, OutputProcess


class ListenerProcess(OutputProcess):
    """A ``flask signalbus listen`` process whose combined output is collected as it comes."""

    output_timeout = 10.0

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        command = [FLASK, "--app", "tests.listener_app", "signalbus", "listen", *args]
        super().__init__(command, env)

    def wait_ready(self) -> None:
        self.wait_for_output("listening")


class Database:
    """Direct access to the test database: inserts, notifications, sent rows."""

    def __init__(self, url: str, sent_file: Path) -> None:
        self.url = url
        self.conninfo = libpq_conninfo(url)
        self.name = make_url(url).database
        self.sent_file = sent_file
        self.connection = psycopg.connect(self.conninfo, autocommit=True)
        self._lock = threading.Lock()

    def execute(self, query: str, params: tuple = ()) -> list[tuple]:
        with self._lock, self.connection.cursor() as cursor:
            cursor.execute(query.encode(), params)
            return cursor.fetchall() if cursor.description else []

    def insert(self, table: str, first: int, last: int | None = None) -> None:
        """Insert ids *first* to *last* (inclusive) in one transaction."""
        last = first if last is None else last
        self.execute(
            f"INSERT INTO {table} (id) SELECT generate_series(%s::bigint, %s)", (first, last)
        )

    def pending(self, table: str) -> set[int]:
        return {row[0] for row in self.execute(f"SELECT id FROM {table}")}

    def sent(self, model: str = "Tick") -> list[int]:
        return [int(fields[1]) for fields in self._sent_lines() if fields[0] == model]

    def senders(self) -> set[str]:
        return {fields[2] for fields in self._sent_lines()}

    def _sent_lines(self) -> list[list[str]]:
        """The complete lines of the sent file: a listener may be writing the last one."""
        if not self.sent_file.exists():
            return []
        text = self.sent_file.read_text()
        return [line.split() for line in text[: text.rfind("\n") + 1].splitlines()]

    def listener_pids(self) -> set[int]:
        query = (
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = 'signalbus-listener'"
        )
        return {row[0] for row in self.execute(query, (self.name,))}

    def terminate(self, pids: set[int]) -> None:
        for pid in pids:
            self.execute("SELECT pg_terminate_backend(%s)", (pid,))

    def other_backends(self) -> set[int]:
        query = "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
        return {row[0] for row in self.execute(query, (self.name,))}


class Producer(threading.Thread):
    """Insert consecutive ids into *table*, a few per transaction, until stopped (or its
    with block ends)."""

    def __init__(
        self, database: Database, first: int = 1, per_transaction: int = 3, table: str = "tick"
    ) -> None:
        super().__init__(daemon=True)
        self.database = database
        self.table = table
        self.next_id = first
        self.per_transaction = per_transaction
        self.inserted: list[int] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(0.005):
            last = self.next_id + self.per_transaction - 1
            self.database.insert(self.table, self.next_id, last)
            self.inserted.extend(range(self.next_id, last + 1))
            self.next_id = last + 1

    def stop(self) -> list[int]:
        self._stopping.set()
        self.join()
        return self.inserted

    def __enter__(self) -> Producer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
