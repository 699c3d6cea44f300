"""The listener's progress lines: rows sent per model, and backlogs drained.

While a model sends, one INFO line at most every :data:`PROGRESS_INTERVAL`
seconds says how many rows went out and at what rate; when a backlog of at
least :data:`BACKLOG_LINE_ROWS` rows has been drained, a line says so. A
backlog is the rows a model sends from a flush that leaves rows behind until
one that drains its table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BACKLOG_LINE_ROWS", "PROGRESS_INTERVAL", "ProgressLog"]

logger = logging.getLogger("signalbus.listener")

#: Seconds at least between two progress lines of a model.
PROGRESS_INTERVAL = 60.0

#: A drained backlog of this many rows or more gets a line of its own.
BACKLOG_LINE_ROWS = 10_000


@dataclass
class _Counts:
    window_rows: int = 0
    window_started: float | None = None
    last_sent: float | None = None
    backlog_rows: int = 0
    backlog_started: float | None = None


class ProgressLog:
    """Counts the rows each model sends and logs its progress lines.

    Not thread-safe: its caller serialises the calls (see
    :class:`~signalbus.activity.Activity`).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._counts: dict[str, _Counts] = {}

    def sent(self, name: str, rows: int) -> None:
        """*rows* rows of the model named *name* went out (one burst)."""
        now = self._clock()
        counts = self._counts.setdefault(name, _Counts())
        idle = counts.last_sent is not None and now - counts.last_sent >= PROGRESS_INTERVAL
        if counts.window_started is None or idle:  # a minute without sends: a new start
            counts.window_started, counts.window_rows = now, 0
        counts.last_sent = now
        counts.window_rows += rows
        if counts.backlog_started is None:
            counts.backlog_started = now
        counts.backlog_rows += rows
        elapsed = now - counts.window_started
        if elapsed >= PROGRESS_INTERVAL:
            logger.info("Sent %d %s signals in %.0f s (%.0f/s).", counts.window_rows, name,
                        elapsed, counts.window_rows / elapsed)  # fmt: skip
            counts.window_rows, counts.window_started = 0, now

    def flushed(self, name: str, drained: bool) -> None:
        """A flush of the model named *name* ended, its table *drained* or not."""
        counts = self._counts.get(name)
        if not drained or counts is None or counts.backlog_started is None:
            return
        if counts.backlog_rows >= BACKLOG_LINE_ROWS:
            logger.info("Drained a backlog of %d %s signals in %.1f s.", counts.backlog_rows,
                        name, self._clock() - counts.backlog_started)  # fmt: skip
        counts.backlog_rows, counts.backlog_started = 0, None
