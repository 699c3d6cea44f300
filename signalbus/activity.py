"""What a listener does, recorded: the source of its metrics, probes and status page.

Workers report each burst sent, each flush that ended or failed; the main loop
reports its turns, the models notifications asked for, and each database's
``LISTEN`` going up or down.
:meth:`Activity.snapshot` gives all of it at one moment. Everything is kept
per model and per database, never per row: a histogram's buckets are counts.
Recording costs a lock and a few additions per burst, plus one histogram
bucket per row for models with a ``signalbus_timestamp_column`` (the
delivery time: the row's timestamp to the broker's confirmation, on this
host's clock).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from .model import SignalModel, get_timestamp_column
from .progress import ProgressLog

__all__ = [
    "DELIVERY_BUCKETS",
    "FAILURE_KINDS",
    "FLUSH_BUCKETS",
    "Activity",
    "ActivitySnapshot",
    "Histogram",
    "SignalSnapshot",
]

#: Upper bounds (seconds) of the buckets of one burst's delete-to-commit time.
FLUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: Upper bounds (seconds) of the buckets of a row's recorded-to-confirmed time.
DELIVERY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip

#: How a flush fails: its database or broker is out (``outage``), or its rows' send failed.
FAILURE_KINDS = ("outage", "row")

#: Seconds over which the send rate is averaged.
RATE_WINDOW = 60


class Histogram:
    """Counts of observations per bucket, Prometheus-style (a value goes in the first
    bucket whose upper bound is at least the value; the last bucket is unbounded)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def copy(self) -> Histogram:
        twin = Histogram(self.bounds)
        twin.counts, twin.sum = list(self.counts), self.sum
        return twin


@dataclass
class SignalSnapshot:
    """One signal model's activity, as of a snapshot."""

    name: str
    sent: int = 0
    #: Failed flushes by kind (:data:`FAILURE_KINDS`).
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_KINDS, 0))
    #: Seconds its flushes have been failing, or ``None`` while they work.
    failing_for: float | None = None
    #: The last failure, one line, redacted; ``None`` while its flushes work.
    last_error: str | None = None
    #: Rows sent per second, averaged over the last minute.
    rate: float = 0.0
    flush_seconds: Histogram = field(default_factory=lambda: Histogram(FLUSH_BUCKETS))
    #: ``None`` for a model without a timestamp column.
    delivery_seconds: Histogram | None = None


@dataclass(frozen=True)
class ActivitySnapshot:
    """A listener's activity at one moment."""

    signals: list[SignalSnapshot]
    #: Each database's description (password masked) and whether it is listened on.
    listening: dict[str, bool]
    #: Seconds since the main loop last turned.
    since_turn: float
    #: Seconds since the listener started.
    uptime: float
    #: When it started, on the wall clock.
    started_at: datetime


@dataclass
class _Signal:
    snapshot: SignalSnapshot
    timestamp: str | None
    failing_since: float | None = None
    #: (second, rows) of the last minute's bursts.
    recent: deque[tuple[int, int]] = field(default_factory=deque)


class Activity:
    """The record of one listener's work; every method is safe to call from any thread."""

    def __init__(
        self,
        models: Iterable[SignalModel],
        databases: Iterable[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._signals = {model: _new_signal(model) for model in models}
        self._listening = dict.fromkeys(databases, False)
        self._started = clock()
        self._started_at = datetime.now(UTC)
        self._turned = self._started
        self._progress = ProgressLog(clock)
        self._changed: set[SignalModel] = set()

    def burst_sent(self, model: SignalModel, rows: Sequence[Any], started: float) -> None:
        """A burst of *rows*, its statement begun at *started* (monotonic), was committed."""
        now = self._clock()
        signal = self._signals[model]
        ages = _ages(rows, signal.timestamp) if signal.timestamp else ()
        second = int(now)
        with self._lock:
            snapshot = signal.snapshot
            snapshot.sent += len(rows)
            snapshot.flush_seconds.observe(now - started)
            if snapshot.delivery_seconds is not None:
                for age in ages:
                    snapshot.delivery_seconds.observe(age)
            recent = signal.recent
            if recent and recent[-1][0] == second:
                recent[-1] = (second, recent[-1][1] + len(rows))
            else:
                recent.append((second, len(rows)))
            self._progress.sent(snapshot.name, len(rows))
            self._changed.add(model)

    def flush_ended(self, model: SignalModel, drained: bool, quarantined: int = 0) -> None:
        """A flush of *model* worked; its table *drained* or not; *quarantined* rows of it
        were moved to quarantine (each counts as a failure of kind ``row``)."""
        with self._lock:
            signal = self._signals[model]
            signal.failing_since, signal.snapshot.last_error = None, None
            signal.snapshot.failures["row"] += quarantined
            self._progress.flushed(signal.snapshot.name, drained)

    def flush_failed(self, model: SignalModel, kind: str, error: str) -> None:
        """A flush of *model* failed: *kind* is one of :data:`FAILURE_KINDS`; *error* one line."""
        with self._lock:
            signal = self._signals[model]
            signal.snapshot.failures[kind] += 1
            signal.snapshot.last_error = error
            if signal.failing_since is None:
                signal.failing_since = self._clock()
            self._changed.add(model)

    def requested(self, model: SignalModel) -> None:
        """A notification or a sweep asked for a flush of *model*."""
        with self._lock:
            self._changed.add(model)

    def take_changed(self) -> set[SignalModel]:
        """The models whose tables may have changed since the last call."""
        with self._lock:
            changed, self._changed = self._changed, set()
        return changed

    def listening(self, database: str, up: bool) -> None:
        """The ``LISTEN`` connection to *database* went *up* or down."""
        with self._lock:
            self._listening[database] = up

    def turned(self) -> None:
        """The main loop turned: it is not stuck."""
        self._turned = self._clock()

    def snapshot(self) -> ActivitySnapshot:
        """Everything recorded, copied at one moment."""
        now = self._clock()
        with self._lock:
            signals = [_snapshot_of(signal, now) for signal in self._signals.values()]
            listening = dict(self._listening)
        return ActivitySnapshot(
            signals=signals,
            listening=listening,
            since_turn=now - self._turned,
            uptime=now - self._started,
            started_at=self._started_at,
        )


def _new_signal(model: SignalModel) -> _Signal:
    column = get_timestamp_column(model)
    snapshot = SignalSnapshot(model.__name__)
    if column is None:
        return _Signal(snapshot, None)
    snapshot.delivery_seconds = Histogram(DELIVERY_BUCKETS)
    # The burst's rows are labelled with the model's attribute names.
    mapper: sa.orm.Mapper[Any] = sa.inspect(model)
    return _Signal(snapshot, mapper.get_property_by_column(column).key)


def _ages(rows: Sequence[Any], timestamp: str) -> list[float]:
    """Seconds from each row's timestamp to now; a naive timestamp is taken as UTC."""
    now = datetime.now(UTC)
    ages = []
    for row in rows:
        recorded = getattr(row, timestamp)
        if recorded is not None:
            if recorded.tzinfo is None:
                recorded = recorded.replace(tzinfo=UTC)
            ages.append((now - recorded).total_seconds())
    return ages


def _snapshot_of(signal: _Signal, now: float) -> SignalSnapshot:
    """A copy of *signal*'s snapshot, its rate and failing time brought up to *now*."""
    recent = signal.recent
    while recent and recent[0][0] <= now - RATE_WINDOW:
        recent.popleft()
    snapshot = signal.snapshot
    delivery = snapshot.delivery_seconds
    return SignalSnapshot(
        name=snapshot.name,
        sent=snapshot.sent,
        failures=dict(snapshot.failures),
        failing_for=None if signal.failing_since is None else now - signal.failing_since,
        last_error=snapshot.last_error,
        rate=sum(rows for _, rows in recent) / RATE_WINDOW,
        flush_seconds=snapshot.flush_seconds.copy(),
        delivery_seconds=None if delivery is None else delivery.copy(),
    )
