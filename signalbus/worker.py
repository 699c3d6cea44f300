"""The listener's workers: a fixed pool of threads that flush the models due.

Each :class:`Worker` takes what the :class:`~signalbus.schedule.FlushQueue`
hands out (a model, or the sweep), runs it through the bus, and reports back.
A worker owns its database connections (two at most per database, detached
from the app's pool) and, through the publisher's per-thread connections, its
broker connection: the listener's resources grow with its workers, never with
the models it serves. After some time without work (:data:`IDLE_RELEASE`
seconds by default) it closes them: the broker's through the models' optional
``signalbus_release()``.

Why a burst can never wait for a connection its own worker's other burst
holds: a worker's connections are its own, opened on demand and never shared
or pooled, so a flush never waits for any pool at all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import psycopg
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from .activity import Activity
from .awake import Awake
from .bus import SignalBus
from .connections import OwnedConnections
from .errors import FailureDescriber, OutageError, one_line
from .flush import FlushResult
from .model import SignalModel, is_ordered
from .redaction import Redactor
from .schedule import IDLE, SENDING, SWEEP, FlushQueue

__all__ = ["IDLE_RELEASE", "Worker"]

logger = logging.getLogger("signalbus.listener")

#: Seconds a worker waits without work before it closes its connections.
IDLE_RELEASE = 120.0


class Worker:
    """One thread flushing the models a :class:`FlushQueue` hands out, until it closes."""

    def __init__(
        self,
        name: str,
        signalbus: SignalBus,
        models: Sequence[SignalModel],
        queue: FlushQueue[SignalModel],
        stopping: threading.Event,
        app: Any,
        redact: Redactor,
        database_works: Callable[[Engine], None],
        activity: Activity,
        awake_of: Callable[[SignalModel], Awake | None] = lambda model: None,
        idle_release: float = IDLE_RELEASE,
        describe: Callable[[BaseException], str] | None = None,
    ) -> None:
        """*database_works* is called with the engine of every flush that worked;
        *activity* records the bursts sent and the flushes that ended or failed;
        *awake_of* gives a model's wake protocol state (``None``: the worker stays
        out of it); *idle_release* is how long the worker may idle before it
        releases its connections; *describe* tells a send's failure for the log
        (shared by the workers: each distinct error shows its traceback once).
        """
        self.idle_release = idle_release
        self.signalbus = signalbus
        self.models = models
        self.queue = queue
        self.app = app
        self._stopping = stopping
        self._redact = redact
        self._database_works = database_works
        self._activity = activity
        self._awake_of = awake_of
        self._describe = describe or FailureDescriber()
        self._connections: dict[Engine, OwnedConnections] = {}
        #: The models flushed since the worker last released what it holds.
        self._flushed: set[SignalModel] = set()
        #: The model being flushed, if any (for the shutdown message).
        self.current: SignalModel | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread.ident is not None:
            self._thread.join(max(0.0, timeout))

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        with self.app.app_context():
            try:
                while (task := self.queue.take(self._idle_after())) is not None:
                    if task is IDLE:
                        self._release()
                    elif task is SWEEP:
                        self._sweep()
                    else:
                        self._flush(task)
            finally:
                self._release()

    def _idle_after(self) -> float | None:
        """Seconds of idleness after which to release what the worker holds, if anything."""
        return self.idle_release if self._flushed or self._connections else None

    def _release(self) -> None:
        """Close the worker's database connections, and let its models release theirs.

        A model's optional ``signalbus_release()`` runs in this thread: e.g.
        :meth:`signalbus.rabbitmq.Publisher.close` closes this thread's connection.
        """
        self._close_connections()
        for model in self._flushed:
            release = getattr(model, "signalbus_release", None)
            if release is not None:
                try:
                    release()
                except Exception as error:
                    logger.warning(
                        "%s.signalbus_release() failed: %s",
                        model.__name__,
                        self._redact(one_line(error)),
                    )
        self._flushed.clear()

    def _sweep(self) -> None:
        failing = self.queue.sweep_failures() > 0
        try:
            found = self.signalbus.models_with_rows(self.models, self._sweep_connection)
        except Exception as error:
            self._close_connections()  # they may be broken; the next sweep opens new ones
            delay = self.queue.swept(ok=False)
            logger.warning(
                "Sweeping failed (%s); sweeping again in %.1f s.",
                self._redact(one_line(error)),
                delay,
            )
            return
        if failing:
            logger.info("Sweeping works again.")
        self.queue.swept(ok=True)
        for engine in {self.signalbus.engine_for(model) for model in self.models}:
            self._database_works(engine)
        for model in found:
            self._activity.requested(model)
            self.queue.request(model)

    def _flush(self, model: SignalModel) -> None:
        failing = self.queue.failures(model) > 0
        engine = self.signalbus.engine_for(model)
        self.current = model
        self._flushed.add(model)
        try:
            result = self._flush_once(model, engine)
        except Exception as error:
            self._failed(model, engine, error)
        else:
            if failing:
                logger.info("Sending %s signals works again.", model.__name__)
            self._activity.flush_ended(model, result.drained, result.quarantined)
            self.queue.done(model, drained=result.drained, sent=result.sent > 0)
            if result.recheck_after is not None:
                self.queue.later(model, result.recheck_after)
            self._database_works(engine)
        finally:
            self.current = None

    def _failed(self, model: SignalModel, engine: Engine, error: Exception) -> None:
        """Report a failed flush: an outage of its database or broker, or the model's own."""
        resource: Hashable
        if isinstance(error, DBAPIError) and _is_connection_error(error):
            what, resource = "the database is unavailable", engine
        elif isinstance(error, OutageError):
            what, resource = "the broker is unavailable", SENDING
        else:
            self._activity.flush_failed(model, "row", self._redact(one_line(error)))
            delay = self.queue.failed(model)
            details = self._describe(error)
            held = " (ordered: the rows behind the failing one wait)" if is_ordered(model) else ""
            logger.error(
                "Sending %s signals failed; its rows are kept%s, retrying in %.1f s%s",
                model.__name__,
                held,
                delay,
                self._redact(details),
            )
            return
        self._activity.flush_failed(model, "outage", self._redact(one_line(error)))
        delay = self.queue.outage(model, resource)
        logger.warning(
            "Sending %s signals failed, %s (%s); its rows are kept, probing again in %.1f s.",
            model.__name__,
            what,
            self._redact(one_line(error)),
            delay,
        )

    def _flush_once(self, model: SignalModel, engine: Engine) -> FlushResult:
        flusher = self.signalbus.flusher(model)
        connections = self._connections_to(engine)
        awake = self._awake_of(model)
        stopping, others_waiting = self._stopping.is_set, self.queue.others_waiting
        observe = self._activity.burst_sent
        try:
            return flusher.flush(connections, stopping, others_waiting, awake, observe)
        except DBAPIError as error:
            connections.close()  # they may be broken; the next flush opens new ones
            if not _is_connection_error(error):
                raise
            # Likely a connection the server closed (a restart): one more try, at
            # once, on a fresh connection, unless the server is down.
            return flusher.flush(connections, stopping, others_waiting, awake, observe)

    def _close_connections(self) -> None:
        for connections in self._connections.values():
            connections.close()
        self._connections.clear()

    def _sweep_connection(self, engine: Engine) -> Connection:
        """The worker's own first connection to *engine*'s database: a sweep opens none."""
        return self._connections_to(engine).get(0)

    def _connections_to(self, engine: Engine) -> OwnedConnections:
        connections = self._connections.get(engine)
        if connections is None:
            connections = self._connections[engine] = OwnedConnections(engine)
        return connections


#: SQLSTATE prefixes of psycopg OperationalErrors that are a statement's own failure, not
#: the database's: a serialization failure or deadlock (class 40), a lock timeout, a
#: statement timeout. A model failing so backs off; its database is not in an outage.
_STATEMENT_FAILURES = ("40", "55P03", "57014")


def _is_connection_error(error: DBAPIError) -> bool:
    if error.connection_invalidated:
        return True
    orig = error.orig
    return isinstance(orig, psycopg.OperationalError) and not (orig.sqlstate or "").startswith(
        _STATEMENT_FAILURES
    )
