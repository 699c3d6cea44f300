"""The wake protocol with real listener processes: no row waits for a sweep, ever.

Every listener here sweeps once an hour, so a row whose writer skipped its
notification can only be delivered through the protocol's promise: the
listener awake for its table looks again before it sleeps.
"""

from __future__ import annotations

import collections
import random
import signal
import threading
import time
from collections.abc import Callable

import pytest

from bench.wake import CLASSIC_FUNCTION
from tests.listener_processes import Database, ListenerProcess
from tests.waiting import wait_until

#: The advisory-lock namespaces of a table's ``awake`` and ``skipped`` locks
#: (sql/notify_function.sql).
AWAKE_NAMESPACE = 1935832435
SKIPPED_NAMESPACE = 1935832436

NO_SWEEP = ("--sweep-interval", "3600")


def awake_holders(database: Database) -> set[int]:
    """The backends holding the ``awake`` lock of a table."""
    query = (
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid = %s::oid AND database = (SELECT oid FROM pg_database"
        " WHERE datname = current_database())"
    )
    return {row[0] for row in database.execute(query, (AWAKE_NAMESPACE,))}


def insert_noting_skip(database: Database, row_id: int) -> bool:
    """Insert one tick; whether the trigger skipped its notification.

    A writer that skipped holds the table's ``skipped`` lock until its
    transaction ends, so it asks before it commits.
    """
    with database.connection.transaction():
        database.insert("tick", row_id)
        held = database.execute(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            " AND classid = %s::oid",
            (SKIPPED_NAMESPACE,),
        )
    return bool(held)


class Writers:
    """Threads inserting ticks: single rows at random gaps of 0-5 ms, and bursts.

    Each writer owns every *count*-th id. The first 20 transactions of every
    100 of a writer are a burst: single-row transactions without a gap, each
    counting, per writer, the ones that skipped their notification.
    """

    def __init__(self, database: Database, count: int) -> None:
        self.count = count
        self.next_id = 1
        self.skipped = [0] * count
        self._databases = [Database(database.url, database.sent_file) for _ in range(count)]
        self._random = [random.Random(number) for number in range(count)]
        self._written = [0] * count

    def write(self, rows: int) -> list[int]:
        """Insert *rows* rows (a multiple of the writers), the writers in parallel; return ids."""
        first, self.next_id = self.next_id, self.next_id + rows
        threads = [
            threading.Thread(target=self._write, args=(number, first, rows))
            for number in range(self.count)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return list(range(first, first + rows))

    def _write(self, number: int, first: int, rows: int) -> None:
        database, rng = self._databases[number], self._random[number]
        for row_id in range(first + number, first + rows, self.count):
            if self._written[number] % 100 < 20:
                self.skipped[number] += insert_noting_skip(database, row_id)
            else:
                database.insert("tick", row_id)
                time.sleep(rng.uniform(0, 0.005))  # the random gap is the test's input
            self._written[number] += 1

    def close(self) -> None:
        for database in self._databases:
            database.connection.close()


def keep_writing(writers: Writers, stop: threading.Event) -> threading.Thread:
    """Write 40 rows at a time in a thread until *stop* is set."""

    def run() -> None:
        while not stop.is_set():
            writers.write(40)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def stalled(database: Database, written: list[int], listeners: list[ListenerProcess]) -> str:
    """What a wave that does not arrive left behind, for the failure message."""
    missing = sorted(set(written) - set(database.sent()))
    locks = database.execute(
        "SELECT pid, classid, objid, mode, granted FROM pg_locks WHERE locktype = 'advisory'"
    )
    output = "\n".join(listener.output[-2000:] for listener in listeners)
    return (
        f"the wave up to row {len(written)}: {len(missing)} rows missing, e.g. {missing[:10]};"
        f" pending {sorted(database.pending('tick'))[:10]}; advisory locks {locks};"
        f" the listeners said:\n{output}"
    )


@pytest.mark.parametrize("listeners", [1, 2])
def test_rows_of_writers_that_skipped_are_never_left_for_the_sweep(
    spawn: Callable[..., ListenerProcess], database: Database, listeners: int
) -> None:
    processes = [spawn(*NO_SWEEP) for _ in range(listeners)]
    for process in processes:
        process.wait_ready()
    writers = Writers(database, count=4)
    written: list[int] = []

    def all_delivered() -> bool:
        return set(written) <= set(database.sent())

    try:
        # Waves of writes, each followed by silence: every wave ends with the
        # listeners falling asleep, the moment a row could be left behind.
        while len(written) < 20_000:
            written.extend(writers.write(200))
            wait_until(
                all_delivered, timeout=30, what=lambda: stalled(database, written, processes)
            )
    finally:
        writers.close()
    counts = collections.Counter(database.sent())
    assert set(counts) == set(written)
    wait_until(lambda: not database.pending("tick"), what="the last commit")
    # The run crossed awake and asleep: writers skipped notifications.
    assert sum(writers.skipped)


def test_a_listener_serves_a_database_whose_function_is_still_the_classic_one(
    spawn: Callable[..., ListenerProcess], database: Database
) -> None:
    database.execute(CLASSIC_FUNCTION)  # a rolling deploy: the database not upgraded yet
    listener = spawn(*NO_SWEEP)
    listener.wait_ready()
    writers = Writers(database, count=4)
    try:
        for _ in range(5):
            written = set(writers.write(200))
            wait_until(lambda w=written: w <= set(database.sent()), timeout=30, what="the wave")
    finally:
        writers.close()
    wait_until(lambda: not database.pending("tick"), what="the last commit")


def test_a_listener_killed_while_awake_silences_nobody(
    spawn: Callable[..., ListenerProcess], database: Database
) -> None:
    doomed = spawn(*NO_SWEEP)
    doomed.wait_ready()
    writers, stop = Writers(database, count=4), threading.Event()
    thread = keep_writing(writers, stop)
    try:
        wait_until(lambda: awake_holders(database), timeout=30, what="the listener awake")
        doomed.process.send_signal(signal.SIGKILL)
        doomed.wait(timeout=5)
        wait_until(lambda: not awake_holders(database), what="its session to end")
    finally:
        stop.set()
        thread.join(timeout=30)
        writers.close()
    fresh = spawn(*NO_SWEEP)
    fresh.wait_ready()  # its catch-up sweep takes what the killed one left
    wait_until(lambda: not database.pending("tick"), timeout=60, what="the catch-up")
    database.insert("tick", 2_000_001)
    wait_until(lambda: 2_000_001 in database.sent(), what="the row, through its notification")


def test_a_stopped_listener_never_keeps_writers_waiting(
    spawn: Callable[..., ListenerProcess], database: Database
) -> None:
    stuck = spawn(*NO_SWEEP)
    stuck.wait_ready()
    writers, stop = Writers(database, count=4), threading.Event()
    thread = keep_writing(writers, stop)
    try:
        wait_until(lambda: awake_holders(database), timeout=30, what="the listener awake")
        stuck.process.send_signal(signal.SIGSTOP)
        # Writers wait on no lock of the listener: with lock_timeout set, one that
        # did would fail, and these 400 single-row transactions would not complete.
        database.execute("SET lock_timeout = '1s'")
        for row_id in range(3_000_001, 3_000_401):
            database.insert("tick", row_id)
    finally:
        stuck.process.send_signal(signal.SIGCONT)
        stop.set()
        thread.join(timeout=30)
        writers.close()
    wait_until(lambda: not database.pending("tick"), timeout=60, what="every row, once resumed")
