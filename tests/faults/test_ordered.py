"""Ordered signals with two listener processes: strictly in key order, and a quick takeover."""

from __future__ import annotations

import signal
from collections.abc import Callable

from tests.listener_processes import Database, ListenerProcess, Producer
from tests.waiting import wait_until

#: The advisory-lock namespace of a table's ``ordered`` lock (sql/take_ordered.sql).
ORDERED_NAMESPACE = 1935832437


def ordered_senders(database: Database) -> list[tuple[int, int]]:
    """(id, sending pid) of every Ordered row sent, in the order they were recorded."""
    return [(int(f[1]), int(f[2])) for f in database._sent_lines() if f[0] == "Ordered"]


def check_in_order(sent: list[tuple[int, int]], killed: int | None = None) -> None:
    """Ids go up one by one; only the killed listener's last burst may be sent again."""
    last = 0
    for index, (row_id, _) in enumerate(sent):
        if row_id == last + 1:
            last = row_id
            continue
        repeats = {i for i, pid in sent if pid == killed}
        around = sent[max(0, index - 5) : index + 5]
        assert row_id <= last and row_id in repeats, f"{row_id} after {last}: {around}"


def test_two_listeners_send_an_ordered_signal_strictly_in_order_and_one_takes_over(
    spawn: Callable[..., ListenerProcess], database: Database
) -> None:
    listeners = {}
    for _ in range(2):
        listener = spawn("--sweep-interval", "3600", "--workers", "2")
        listener.wait_ready()
        listeners[listener.process.pid] = listener
    with Producer(database, per_transaction=2, table="ordered") as producer:
        wait_until(lambda: len(ordered_senders(database)) >= 400, timeout=30, what="400 rows")
        holder = ordered_senders(database)[-1][1]  # the one that sent last
        listeners[holder].process.send_signal(signal.SIGKILL)
        listeners[holder].wait(timeout=5)
        count = len(ordered_senders(database))
        wait_until(
            lambda: len(ordered_senders(database)) >= count + 200,
            timeout=10,
            what="the other listener to take over",
        )
    inserted = producer.inserted
    wait_until(
        lambda: {i for i, _ in ordered_senders(database)} >= set(inserted),
        timeout=30,
        what="every row sent",
    )
    sent = ordered_senders(database)
    check_in_order(sent, killed=holder)
    survivors = {pid for _, pid in sent if pid != holder}
    assert survivors, "the other listener sent nothing"
