"""The flush routine: pick, lock, delete, send and commit signal rows in bursts.

Every way of sending (``flushmany``, the listener's wake-ups and sweeps) goes
through :class:`ModelFlusher`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from .atomic import retry_on_deadlock
from .awake import AWAKE_MIN_ROWS, Awake
from .burst import Burst, BurstStatement
from .connections import BurstConnections
from .errors import one_line
from .isolation import Isolation, IsolationResult, is_outage
from .model import (
    SignalModel,
    check_not_blocked,
    get_burst_count,
    get_max_attempts,
    is_blocked,
    is_ordered,
    send_rows,
    signal_table,
)
from .ordering import ORDERED_RETRY, OrderedLock

__all__ = ["BurstObserver", "FlushResult", "ModelFlusher"]

logger = logging.getLogger(__name__)

#: Called with the model, the rows and the ``time.monotonic()`` at which the burst's
#: statement started, once a burst was committed.
BurstObserver = Callable[[SignalModel, Sequence[Any], float], None]

#: Bursts at least this big are pipelined: the next burst is fetched while the
#: current one is being sent. Smaller ones are not worth a second connection.
PIPELINE_MIN_BURST = 100


@dataclass(frozen=True)
class FlushResult:
    """What one flush did."""

    #: Rows sent (and deleted).
    sent: int
    #: False when the flush stopped early, between two bursts, and rows may be left.
    drained: bool
    #: Seconds after which to flush again: writers that skipped their notification
    #: still ran (see :mod:`signalbus.awake`); ``None`` when nothing is owed.
    recheck_after: float | None = None
    #: Rows moved to quarantine (see :mod:`signalbus.isolation`).
    quarantined: int = 0


class ModelFlusher:
    """Drains one signal model.

    A burst's rows are deleted, sent, and only then committed; a send that
    raises rolls its burst back. An outage's error propagates (as does every
    error of an ordered model: its rows wait behind the failing one);
    otherwise the burst is isolated (:mod:`signalbus.isolation`): the rows
    that fail alone are counted and, at the model's maximum of attempts,
    quarantined, the others sent. Rows go out in primary-key order.

    Full bursts of :data:`PIPELINE_MIN_BURST` rows or more are pipelined: while
    one burst is being sent, the second connection already deletes (without
    committing) the next one, which ``SKIP LOCKED`` keeps disjoint from the
    first. If a send fails, both are rolled back.
    """

    def __init__(
        self,
        model: SignalModel,
        max_attempts: Callable[[], int],
        describe: Callable[[BaseException], str] = one_line,
    ) -> None:
        """*max_attempts* gives the attempts of a row failing alone before it is
        quarantined, unless the model's ``signalbus_max_attempts`` says otherwise;
        *describe* the line a quarantined row's error is kept and logged as."""
        self.model = model
        self.statement = BurstStatement(model)
        self._max_attempts = max_attempts
        self._describe = describe
        table = signal_table(model)
        self._ordered_lock = OrderedLock(table.schema, table.name)

    def flush(
        self,
        connections: BurstConnections,
        stop: Callable[[], bool] | None = None,
        yield_to_others: Callable[[], bool] | None = None,
        awake: Awake | None = None,
        observe: BurstObserver | None = None,
    ) -> FlushResult:
        """Send pending rows on *connections* until none is left; return what was done.

        *stop* is asked before each burst, *yield_to_others* after each one:
        when either returns true the flush ends there, between two bursts.
        With *awake* (a listener's), the flush follows the wake protocol
        (:mod:`signalbus.awake`): once its bursts bring rows in numbers, it
        stays awake, flushing until a burst finds none, and keeps the
        protocol's promise before it returns. *observe* is told of each burst committed.

        An ordered model is flushed only while the flush holds its lock (see
        :mod:`signalbus.ordering`); when another process holds it, the flush
        sends nothing and asks to be tried again (``recheck_after``).
        """
        ordered = is_ordered(self.model)
        if ordered and not self._ordered_lock.take(connections.get(0), connections.on_driver):
            return FlushResult(0, drained=True, recheck_after=ORDERED_RETRY)
        try:
            return self._bursts(
                connections, stop or _never, yield_to_others or _never, awake, observe
            )
        finally:
            if awake is not None:
                _let_go(awake, connections)
            if ordered:
                self._release_ordered(connections)

    def _bursts(
        self,
        connections: BurstConnections,
        should_stop: Callable[[], bool],
        should_yield: Callable[[], bool],
        awake: Awake | None,
        observe: BurstObserver | None,
    ) -> FlushResult:
        burst_count = get_burst_count(self.model)
        pipelined = burst_count >= PIPELINE_MIN_BURST
        sent, current, quarantined = 0, 0, 0
        tried_waking = False
        upcoming: Future[Burst] | None = None
        try:
            while not should_stop():
                if upcoming is None:
                    check_not_blocked(self.model)
                    burst = self._fetch(connections, current, burst_count)
                else:
                    burst, upcoming = upcoming.result(), None
                    if is_blocked(self.model):  # since it was fetched: no send to wait on
                        burst.rollback()
                        check_not_blocked(self.model)
                if not burst.rows:
                    burst.rollback()
                    if awake is None or not awake.owes_look:
                        return FlushResult(sent, drained=True, quarantined=quarantined)
                    recheck_after = _fall_asleep(awake, connections, current)
                    if recheck_after is not None:
                        return FlushResult(sent, True, recheck_after, quarantined)
                    continue  # the last look, starting after the writers that skipped ended
                full, index = len(burst.rows) == burst_count, current
                if (
                    pipelined
                    and full
                    and not (should_stop() or should_yield() or is_blocked(self.model))
                ):
                    current = 1 - current  # the other connection deletes the next burst
                    upcoming = connections.prefetcher().submit(
                        self._fetch, connections, current, burst_count
                    )
                try:
                    self._send(burst, connections.per_burst_settings, observe)
                except Exception as error:
                    if upcoming is not None:
                        _roll_back_when_done(upcoming)
                        upcoming = None
                    if is_outage(error) or is_ordered(self.model):
                        raise
                    isolated = self._isolate(connections, index, burst.rows, error, observe)
                    sent, quarantined = (
                        sent + isolated.sent,
                        quarantined + len(isolated.quarantined),
                    )
                    continue
                sent += len(burst.rows)
                if awake is not None and not tried_waking and len(burst.rows) >= AWAKE_MIN_ROWS:
                    tried_waking = True  # once: another listener may hold the lock
                    awake.wake_up(connections.get(index), connections.on_driver)
                if not (full or (awake is not None and awake.owes_look)):
                    # Owing a look (awake now, or writers skipped since the last look),
                    # the flush goes on to a burst that finds nothing, and keeps it then.
                    return FlushResult(sent, drained=True, quarantined=quarantined)
                if should_yield():
                    break
            return FlushResult(sent, drained=False, quarantined=quarantined)
        finally:
            if upcoming is not None:
                _roll_back_when_done(upcoming)

    def _release_ordered(self, connections: BurstConnections) -> None:
        """Give the ordered lock back; should that fail, end the connections' sessions (and
        the lock goes with its session)."""
        try:
            self._ordered_lock.release(connections.get(0), connections.on_driver)
        except Exception:
            logger.warning("Giving back the ordered lock of %s failed; closing its connections.",
                           self.model.__name__, exc_info=True)  # fmt: skip
            connections.close(end_sessions=True)

    @retry_on_deadlock()
    def _fetch(self, connections: BurstConnections, index: int, burst_count: int) -> Burst:
        connection = connections.get(index)
        return self.statement.fetch(connection, burst_count, connections.on_driver)

    def _send(self, burst: Burst, per_burst_settings: bool, observe: BurstObserver | None) -> None:
        """Send the burst and commit it; a failed send rolls it back (the prefetched one
        is rolled back by :meth:`flush`)."""
        try:
            send_rows(self.model, burst.rows)
        except BaseException:
            # The send's error is the one to report: a rollback on a dead connection
            # fails too, and the server rolls the burst back when the connection goes.
            with contextlib.suppress(Exception):
                burst.rollback()
            raise
        burst.commit(per_burst_settings)
        if observe is not None:
            observe(self.model, burst.rows, burst.started)

    def _isolate(
        self,
        connections: BurstConnections,
        index: int,
        rows: list[Any],
        error: Exception,
        observe: BurstObserver | None,
    ) -> IsolationResult:
        def send(burst: Burst) -> None:
            self._send(burst, connections.per_burst_settings, observe)

        max_attempts = get_max_attempts(self.model, self._max_attempts())
        isolation = Isolation(
            self.model, self.statement, connections.get(index), send, max_attempts, self._describe
        )
        return isolation.run(rows, error)


def _fall_asleep(awake: Awake, connections: BurstConnections, index: int) -> float | None:
    """Give the ``awake`` lock back; return when to look again if skipping writers still run."""
    awake.fall_asleep()
    if awake.skipped_writers_done(connections.get(index), connections.on_driver):
        return None
    return awake.recheck_delay()


def _let_go(awake: Awake, connections: BurstConnections) -> None:
    """Give the ``awake`` lock back as a flush ends; the next flush keeps the promise.

    Should giving it back fail, the connections close: the lock goes with its
    session, and a lock left behind would keep writers from notifying.
    """
    try:
        awake.fall_asleep()
    except Exception:
        logger.warning("Giving back the awake lock failed; closing the connections.",
                       exc_info=True)  # fmt: skip
        connections.close(end_sessions=True)


def _never() -> bool:
    return False


def _roll_back_when_done(upcoming: Future[Burst]) -> None:
    try:
        burst = upcoming.result()
    except Exception:
        return  # its own transaction was rolled back in _fetch
    with contextlib.suppress(Exception):
        burst.rollback()
