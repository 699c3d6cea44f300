"""The listener: wake-ups, sweeps, reconnects, backoff and shutdown.

A :class:`Listener` keeps one :class:`~signalbus.notifications.Subscription`
per database: a connection ``LISTEN``-ing on the signal channel. The triggers
notify that channel with the name of the table that got rows; the listener
maps the name to a signal model and asks its
:class:`~signalbus.schedule.FlushQueue` for a flush of that model.
Notifications are only hints (a lost one costs latency, never a row): after
each (re)connect and then every ``sweep_interval`` seconds, a sweep asks for
every model whose table has rows, in one statement per database.

A fixed pool of ``workers`` threads (:class:`~signalbus.worker.Worker`) takes
the due models from the queue and flushes them, one worker per model at a
time, fairly: a model whose send fails never delays the others, one whose
send hangs holds one worker until its timeout. A failing model is retried
with capped, jittered exponential backoff; its rows stay in the table
meanwhile. When a database or the broker is down, its models wait while one
of them probes it about every :data:`~signalbus.schedule.OUTAGE_PROBE_MAX`
seconds.

A LISTEN connection silent for ``probe_interval`` seconds is probed with
``SELECT 1``, which must be answered within :data:`PROBE_TIMEOUT` seconds (a
half-open connection fails here); TCP keepalives watch the peer in between. A
lost connection is reopened with backoff (at most
:data:`~signalbus.schedule.OUTAGE_PROBE_MAX` seconds apart, and at once when a
flush on its database works), its database's pooled connections are dropped,
and a sweep catches up. Against an idle database a listener runs one
transaction per sweep interval and one per probe interval, plus one for the
session setting of a worker connection that a sweep opens (workers release
theirs after :data:`~signalbus.worker.IDLE_RELEASE` seconds without work).

:meth:`Listener.stop` (or ``SIGTERM``/``SIGINT``) ends the flushes between two
bursts; a burst still being sent after :data:`SHUTDOWN_GRACE` seconds is left
to be rolled back when the process exits.

Before it listens, :meth:`Listener.run` checks each database once for what
retrying cannot fix (:func:`~signalbus.preflight.check_databases`), raising
:class:`~signalbus.preflight.StartupError`.

What it does is recorded in its :class:`~signalbus.activity.Activity`; with
*metrics_port*, a :class:`~signalbus.server.StatusServer` serves that record
as metrics, probes and a status page. The main loop turns at least every
:data:`TURN_MAX` seconds, so that ``/healthz`` can tell a stuck one.

The listener runs no SQL: its subscriptions ``LISTEN`` and probe, everything
else goes through the bus, the preflight and the backlog measurement
(:mod:`signalbus.backlog`).
"""

from __future__ import annotations

import logging
import select
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import psycopg
from sqlalchemy.engine import Engine

from .activity import Activity
from .awake import Awake
from .backlog import Backlog, measure_backlogs
from .backlog_watch import BacklogWatch
from .bus import SignalBus
from .config import (
    ALWAYS_NOTIFY,
    DEFAULT_CHANNEL,
    DEFAULT_CONFIG,
    METRICS_HOST,
    PROBE_INTERVAL,
    READY_FAILING_SECONDS,
    SWEEP_INTERVAL,
    WORKERS,
    check_channel,
    check_seconds,
    check_workers,
    listener_settings,
)
from .errors import FailureDescriber, one_line
from .model import SignalModel, signal_table
from .notifications import Subscription, WakePipe
from .preflight import StartupError, check_databases
from .schedule import OUTAGE_PROBE_MAX, FlushQueue
from .server import StatusServer
from .worker import IDLE_RELEASE, Worker

__all__ = ["Listener", "listener_from_config"]

logger = logging.getLogger(__name__)

#: Seconds at most between two retries of a failing model or connection.
MAX_BACKOFF = 30.0

#: Seconds a probe may take before the connection is deemed dead.
PROBE_TIMEOUT = 10.0

#: Seconds the workers get to finish their burst on :meth:`Listener.stop`.
SHUTDOWN_GRACE = 1.5

#: Seconds at most between two turns of the main loop.
TURN_MAX = 5.0

_LOGGED_PAYLOAD_CHARS = 64


def listener_from_config(
    signalbus: SignalBus,
    config: Mapping[str, Any],
    models: Sequence[SignalModel] | None = None,
    *,
    sweep_interval: float | None = None,
    workers: int | None = None,
    metrics_port: int | None = None,
    app: Any = None,
) -> Listener:
    """Create a :class:`Listener` configured by the ``SIGNALBUS_*`` keys of *config*.

    *sweep_interval*, *workers* and *metrics_port*, when given, override
    ``SIGNALBUS_SWEEP_INTERVAL``, ``SIGNALBUS_WORKERS`` and
    ``SIGNALBUS_METRICS_PORT``. Raises :class:`~signalbus.errors.ConfigurationError`
    naming the key of a bad setting.
    """
    settings = listener_settings(
        config, sweep_interval=sweep_interval, workers=workers, metrics_port=metrics_port
    )
    return Listener(
        signalbus,
        models,
        channel=settings.channel,
        sweep_interval=settings.sweep_interval,
        probe_interval=settings.probe_interval,
        workers=settings.workers,
        always_notify=settings.always_notify,
        metrics_port=settings.metrics_port,
        metrics_host=settings.metrics_host,
        ready_failing_seconds=settings.ready_failing_seconds,
        app=app,
    )


class Listener:
    """Send signal rows as soon as a notification announces them.

    *models* are the signal models to serve (all of them when ``None``);
    *channel* is the notification channel of the triggers. :meth:`run` blocks
    until :meth:`stop` is called, or, when run in the main thread, until
    ``SIGTERM`` or ``SIGINT``. Create it inside the app context of
    ``signalbus.db`` (or pass *app*); the worker threads push that app's context.
    *workers* threads flush; each releases its connections after *idle_release*
    seconds without work. Unless *always_notify*, the listener takes part in
    the wake protocol (:mod:`signalbus.awake`): writers skip their
    notification while it is awake for their table. With *metrics_port* (0:
    any free port), it serves its metrics, probes and status page on
    *metrics_host* (see :mod:`signalbus.server`); ``/readyz`` fails once a
    model has been failing for *ready_failing_seconds*.
    """

    def __init__(
        self,
        signalbus: SignalBus,
        models: Sequence[SignalModel] | None = None,
        *,
        channel: str = DEFAULT_CHANNEL,
        sweep_interval: float = DEFAULT_CONFIG[SWEEP_INTERVAL],
        probe_interval: float = DEFAULT_CONFIG[PROBE_INTERVAL],
        max_backoff: float = MAX_BACKOFF,
        workers: int = DEFAULT_CONFIG[WORKERS],
        idle_release: float = IDLE_RELEASE,
        always_notify: bool = DEFAULT_CONFIG[ALWAYS_NOTIFY],
        metrics_port: int | None = None,
        metrics_host: str = DEFAULT_CONFIG[METRICS_HOST],
        ready_failing_seconds: float = DEFAULT_CONFIG[READY_FAILING_SECONDS],
        app: Any = None,
    ) -> None:
        if app is None:
            from flask import current_app

            app = current_app._get_current_object()  # type: ignore[attr-defined]
        served = signalbus.get_signal_models() if models is None else list(models)
        if not served:
            raise ValueError("A listener needs at least one signal model to serve.")
        self.channel = check_channel(channel)
        self.probe_interval = check_seconds("probe_interval", probe_interval)
        sweep_interval = check_seconds("sweep_interval", sweep_interval)
        max_backoff = check_seconds("max_backoff", max_backoff)
        #: Set once every database's connection has run its first ``LISTEN``.
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self._wake_pipe = WakePipe()
        self._stop_reason = ""
        self._connecting = False
        self._tables = signalbus.get_signal_tables()
        by_engine = signalbus.models_by_engine(served)
        engines = {model: engine for engine, group in by_engine.items() for model in group}
        self._redact = signalbus.redactor()
        self._served = set(served)
        self._models = served
        self._signalbus = signalbus
        self._app = app
        self._queue: FlushQueue[SignalModel] = FlushQueue(
            served, sweep_interval, max_backoff, resource_of=engines.__getitem__
        )
        self._subscriptions = [
            Subscription(engine, channel, group, OUTAGE_PROBE_MAX)
            for engine, group in by_engine.items()
        ]
        self.activity = Activity(served, [s.description for s in self._subscriptions])
        #: Serves the activity, with *metrics_port*; started by :meth:`run`.
        self.status_server: StatusServer | None = None
        if metrics_port is not None:
            self.status_server = StatusServer(
                metrics_host,
                metrics_port,
                self.activity,
                BacklogWatch(served, self._measure_backlogs, self.activity.take_changed),
                check_seconds("ready_failing_seconds", ready_failing_seconds),
            )
        awake = {} if always_notify else {model: _awake(model) for model in served}
        describe = FailureDescriber()
        self._workers = [
            Worker(
                f"signalbus-worker-{number}",
                signalbus,
                served,
                self._queue,
                self._stopping,
                app,
                self._redact,
                self._database_works,
                self.activity,
                awake.get,
                check_seconds("idle_release", idle_release),
                describe,
            )
            for number in range(1, check_workers("workers", workers) + 1)
        ]
        #: The cause of each subscription's connection failures, while they go on.
        self._connect_failures: dict[Subscription, str] = {}

    def run(self) -> None:
        """Listen and flush until stopped; returns once the workers are done.

        Raises :class:`~signalbus.preflight.StartupError`, before listening, for
        a database that retrying would not fix, or a metrics port it cannot bind.
        """
        restore = self._handle_signals()
        try:
            self._serve_status()
            if self._preflight():
                for worker in self._workers:
                    worker.start()
                self._loop()
        finally:
            self._shut_down()
            restore()

    def _serve_status(self) -> None:
        if self.status_server is None:
            return
        server = self.status_server
        try:
            server.start()
        except OSError as error:
            raise StartupError(
                f"Cannot serve metrics on {server.host}:{server.port}: {error.strerror or error}"
            ) from None

    def _measure_backlogs(self, models: Sequence[SignalModel]) -> dict[SignalModel, Backlog]:
        with self._app.app_context():
            return measure_backlogs(self._signalbus, models)

    def _preflight(self) -> bool:
        """Check what retrying cannot fix (see :mod:`signalbus.preflight`); false if stopped."""
        self._connecting = True
        try:
            with self._app.app_context():
                check_databases(self._signalbus, self._models)
        except _Interrupted:
            logger.info("Received %s; stopping.", self._stop_reason)
            return False
        finally:
            self._connecting = False
        return not (self._stopping.is_set() or self._stop_reason)

    def stop(self) -> None:
        """Ask :meth:`run` to return; safe to call from any thread."""
        self._stopping.set()
        self._queue.close()
        self._wake_pipe.wake()

    def _loop(self) -> None:
        while not (self._stopping.is_set() or self._stop_reason):
            self.activity.turned()
            try:
                for subscription in self._subscriptions:
                    self._tend(subscription)
            except _Interrupted:
                break
            listening = [s for s in self._subscriptions if s.connection is not None]
            timeout = min(
                time.monotonic() + TURN_MAX,
                *(s.next_deadline(self.probe_interval) for s in self._subscriptions),
            )
            waited: list[Subscription | WakePipe] = [self._wake_pipe, *listening]
            readable, _, _ = select.select(waited, [], [], max(0.0, timeout - time.monotonic()))
            if self._wake_pipe in readable:
                self._wake_pipe.drain()
            for subscription in listening:
                if subscription in readable:
                    self._receive(subscription)
        if self._stop_reason:
            logger.info("Received %s; stopping.", self._stop_reason)

    def _tend(self, subscription: Subscription) -> None:
        """Connect a subscription that is due to, or probe one that has been silent."""
        now = time.monotonic()
        if subscription.connection is None:
            if now >= subscription.retry_at:
                self._connect(subscription)
        elif now - subscription.last_heard >= self.probe_interval:
            timeout = min(PROBE_TIMEOUT, self.probe_interval)
            try:
                subscription.probe(timeout, self._wake_pipe.fileno())
            except psycopg.Error as error:
                self._lost(subscription, error)
            else:
                self._receive(subscription)

    def _connect(self, subscription: Subscription) -> None:
        try:
            self._connecting = True
            try:
                subscription.connect()
            finally:
                self._connecting = False
        except psycopg.Error as error:
            delay = subscription.schedule_retry()
            failure = self._redact(one_line(error))
            if self._connect_failures.get(subscription) != failure:  # said once per cause
                self._connect_failures[subscription] = failure
                logger.warning(
                    "Cannot listen on %s (%s); retrying every %g s or less until it answers.",
                    subscription.description,
                    failure,
                    OUTAGE_PROBE_MAX,
                )
            logger.debug("Retrying to listen on %s in %.2f s.", subscription.description, delay)
            return
        self._connect_failures.pop(subscription, None)
        self.activity.listening(subscription.description, True)
        if subscription.connections == 1:
            logger.info(
                "Now listening on channel %r of %s for %s.",
                self.channel,
                subscription.description,
                ", ".join(model.__name__ for model in subscription.models),
            )
        else:
            logger.info("Reconnected to %s; catching up.", subscription.description)
            # The server may have restarted: drop the pooled connections it killed.
            subscription.engine.dispose()
        self._queue.available(subscription.engine)
        self._queue.sweep(catch_up=True)
        if all(s.connection is not None for s in self._subscriptions):
            self.ready.set()
        self._receive(subscription)

    def _receive(self, subscription: Subscription) -> None:
        try:
            payloads = subscription.receive()
        except psycopg.Error as error:
            self._lost(subscription, error)
            return
        self._dispatch(payloads)

    def _lost(self, subscription: Subscription, error: psycopg.Error) -> None:
        subscription.close()
        self.activity.listening(subscription.description, False)
        delay = subscription.schedule_retry()
        logger.warning(
            "Lost the LISTEN connection to %s (%s); reconnecting in %.1f s.",
            subscription.description,
            self._redact(one_line(error)),
            delay,
        )

    def _dispatch(self, payloads: Iterable[str]) -> None:
        """Ask for a flush of each model named by *payloads*, once per model."""
        woken: set[SignalModel] = set()
        for payload in payloads:
            model = self._tables.get(payload)
            if model is None:
                logger.warning(
                    "Ignoring a notification on channel %r for an unknown table: %s",
                    self.channel,
                    _shorten(payload),
                )
            elif model not in woken and model in self._served:
                woken.add(model)
                self.activity.requested(model)
                self._queue.request(model)

    def _database_works(self, engine: Engine) -> None:
        """Reconnect a lost LISTEN to *engine*'s database at once: a flush there worked.

        Called by the workers, from their threads.
        """
        for subscription in self._subscriptions:
            if subscription.engine is engine and subscription.connection is None:
                subscription.retry_at = 0.0
                self._wake_pipe.wake()

    def _handle_signals(self) -> Callable[[], None]:
        """Make SIGTERM and SIGINT stop the listener; return a function undoing it."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        # Only a flag and a pipe write: the handler interrupts the main thread
        # anywhere, possibly while it holds a lock that stop() would take.
        def handle(signum: int, frame: Any) -> None:
            self._stop_reason = signal.Signals(signum).name
            self._wake_pipe.wake()
            if self._connecting:  # connecting to a silent server may take connect_timeout
                self._connecting = False  # once: a second signal must not raise again
                raise _Interrupted

        previous = {signum: signal.signal(signum, handle) for signum in _STOP_SIGNALS}

        def restore() -> None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

        return restore

    def _shut_down(self) -> None:
        self.stop()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for worker in self._workers:
            worker.join(deadline - time.monotonic())
        for worker in self._workers:
            if worker.is_alive() and worker.current is not None:
                logger.warning(
                    "%s is still sending; its burst will be rolled back.", worker.current.__name__
                )
        for subscription in self._subscriptions:
            subscription.close()
        if self.status_server is not None:
            self.status_server.close()


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Interrupted(BaseException):
    """A stop signal arrived while the main thread was connecting."""


def _shorten(payload: str) -> str:
    """Quote an untrusted payload for a log line, cut to a few dozen characters."""
    if len(payload) <= _LOGGED_PAYLOAD_CHARS:
        return repr(payload)
    return f"{payload[:_LOGGED_PAYLOAD_CHARS]!r}... ({len(payload)} characters)"


def _awake(model: SignalModel) -> Awake:
    table = signal_table(model)
    return Awake(table.schema, table.name)
