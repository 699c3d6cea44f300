"""A listener's view of its backlogs: measured lazily, rarely, and only where rows may be.

Probes, metrics and the status page ask for the backlogs whenever they are
scraped; :class:`BacklogWatch` answers from its last measurement unless it is
older than :data:`BACKLOG_REFRESH` seconds, and then measures only the
models that may have rows (see :func:`~signalbus.backlog.measure_backlogs`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from .backlog import Backlog
from .model import SignalModel

__all__ = ["BACKLOG_REFRESH", "QUARANTINE_REFRESH", "BacklogWatch", "Measure"]

logger = logging.getLogger(__name__)

#: Seconds at least between two measurements of a listener's backlogs.
BACKLOG_REFRESH = 5.0

#: Seconds at least between two measurements of a signal with only quarantined rows.
QUARANTINE_REFRESH = 60.0


Measure = Callable[[Sequence[SignalModel]], dict[SignalModel, Backlog]]


class BacklogWatch:
    """A listener's backlogs, measured when asked, but at most every *refresh* seconds,
    and only for the models whose tables may have changed.

    *changed* returns (and forgets) the models that got notifications, sent or
    failed since it was last called; a model measured with pending rows is
    measured again until it has none. So against an idle database, asking runs
    no statement at all; with rows in quarantine (which a purge may remove,
    notifying no one), one every :data:`QUARANTINE_REFRESH` seconds. A failed
    measurement keeps the previous values (logged at DEBUG) and the models it
    was for stay due: it is a view, and the listener reports its outages itself.
    """

    def __init__(
        self,
        models: Sequence[SignalModel],
        measure: Measure,
        changed: Callable[[], set[SignalModel]],
        refresh: float = BACKLOG_REFRESH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._models = list(models)
        self._measure = measure
        self._changed = changed
        self._refresh = refresh
        self._clock = clock
        self._lock = threading.Lock()
        self._backlogs: dict[SignalModel, tuple[Backlog, float]] = {}
        self._measured_at: float | None = None
        #: Changed models whose measurement failed: due again.
        self._unmeasured: set[SignalModel] = set()

    def current(self) -> dict[SignalModel, Backlog]:
        """The latest backlog of each model measured so far, oldest ages brought up to now."""
        with self._lock:
            now = self._clock()
            if self._measured_at is None or now - self._measured_at >= self._refresh:
                self._measure_due(now)
            return {
                model: _aged(backlog, now - at) for model, (backlog, at) in self._backlogs.items()
            }

    def _measure_due(self, now: float) -> None:
        changed = self._changed() | self._unmeasured
        due = [model for model in self._models if model in changed or self._stale(model, now)]
        self._measured_at = now
        if not due:
            return
        try:
            measured = self._measure(due)
        except Exception as error:
            logger.debug("Measuring the backlogs failed: %s", error)
            self._unmeasured = changed
            return
        self._unmeasured = set()
        self._backlogs.update((model, (backlog, now)) for model, backlog in measured.items())

    def _stale(self, model: SignalModel, now: float) -> bool:
        """Never measured, pending rows that go, or quarantined rows not looked at for long."""
        if model not in self._backlogs:
            return True
        backlog, at = self._backlogs[model]
        return bool(backlog.pending) or (
            bool(backlog.quarantined) and now - at >= QUARANTINE_REFRESH
        )


def _aged(backlog: Backlog, seconds: float) -> Backlog:
    if backlog.oldest_age is None:
        return backlog
    return Backlog(backlog.pending, backlog.oldest_age + seconds, backlog.quarantined)
