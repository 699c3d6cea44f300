"""The LISTEN loop: wake-ups, sweeps, reconnects, backoff and shutdown.

A :class:`Listener` keeps one :class:`~signalbus.notifications.Subscription`
per database: a connection ``LISTEN``-ing on the signal channel. The triggers
notify that channel with the name of the table that got rows; the listener
maps the name to a signal model and asks that model's *flusher* to flush it
with :meth:`SignalBus.flush_model`. Notifications are only hints (a lost one
costs latency, never a row): every model is also flushed once after each
(re)connect and then every ``sweep_interval`` seconds.

Each served model has its own flusher thread, so a model whose send fails or
hangs never delays the others; its :class:`~signalbus.schedule.FlushSchedule`
says when a flush is due. A failing model is retried with capped, jittered
exponential backoff; its rows stay in the table meanwhile.

A LISTEN connection silent for ``probe_interval`` seconds is probed with
``SELECT 1``, which must be answered within :data:`PROBE_TIMEOUT` seconds (a
half-open connection fails here); TCP keepalives watch the peer in between. A
lost connection is reopened with backoff, its database's pooled connections are
dropped, and every model is flushed (catch-up). Against an idle database a
listener runs one transaction per model per sweep interval and one per probe
interval.

:meth:`Listener.stop` (or ``SIGTERM``/``SIGINT``) ends the flushes between two
bursts; a burst still being sent after :data:`SHUTDOWN_GRACE` seconds is left
to be rolled back when the process exits.

The listener runs no SQL: its subscriptions ``LISTEN`` and probe, everything
else goes through the bus.
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
from sqlalchemy.exc import DBAPIError

from .backoff import Backoff
from .bus import SignalBus
from .config import (
    DEFAULT_CHANNEL,
    DEFAULT_CONFIG,
    PROBE_INTERVAL,
    SWEEP_INTERVAL,
    check_channel,
    check_seconds,
    listener_settings,
)
from .errors import failure_details, one_line
from .model import SignalModel
from .notifications import Subscription, WakePipe
from .redaction import Redactor
from .schedule import FlushSchedule

__all__ = ["Listener", "listener_from_config"]

logger = logging.getLogger(__name__)

#: Seconds at most between two retries of a failing model or connection.
MAX_BACKOFF = 30.0

#: Seconds a probe may take before the connection is deemed dead.
PROBE_TIMEOUT = 10.0

#: Seconds the flushers get to finish their burst on :meth:`Listener.stop`.
SHUTDOWN_GRACE = 1.5

_LOGGED_PAYLOAD_CHARS = 64


def listener_from_config(
    signalbus: SignalBus,
    config: Mapping[str, Any],
    models: Sequence[SignalModel] | None = None,
    *,
    sweep_interval: float | None = None,
    app: Any = None,
) -> Listener:
    """Create a :class:`Listener` configured by the ``SIGNALBUS_*`` keys of *config*.

    *sweep_interval*, when given, overrides ``SIGNALBUS_SWEEP_INTERVAL``. Raises
    :class:`~signalbus.errors.ConfigurationError` naming the key of a bad setting.
    """
    settings = listener_settings(config, sweep_interval=sweep_interval)
    return Listener(
        signalbus,
        models,
        channel=settings.channel,
        sweep_interval=settings.sweep_interval,
        probe_interval=settings.probe_interval,
        app=app,
    )


class Listener:
    """Send signal rows as soon as a notification announces them.

    *models* are the signal models to serve (all of them when ``None``);
    *channel* is the notification channel of the triggers. :meth:`run` blocks
    until :meth:`stop` is called, or, when run in the main thread, until
    ``SIGTERM`` or ``SIGINT``. Create it inside the app context of
    ``signalbus.db`` (or pass *app*); the flusher threads push that app's context.
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
        engines = {model: signalbus.engine_for(model) for model in served}
        self._redact = signalbus.redactor()
        self._flushers = {
            model: _Flusher(
                signalbus,
                model,
                app,
                self._stopping,
                FlushSchedule(sweep_interval, Backoff(0.5, max_backoff)),
                self._redact,
            )
            for model in served
        }
        self._subscriptions = [
            Subscription(engine, channel, group, max_backoff)
            for engine, group in _group_by_engine(engines).items()
        ]

    def run(self) -> None:
        """Listen and flush until stopped; returns once the flushers are done."""
        restore = self._handle_signals()
        try:
            for flusher in self._flushers.values():
                flusher.start()
            self._loop()
        finally:
            self._shut_down()
            restore()

    def stop(self) -> None:
        """Ask :meth:`run` to return; safe to call from any thread."""
        self._stopping.set()
        for flusher in self._flushers.values():
            flusher.request()
        self._wake_pipe.wake()

    def _loop(self) -> None:
        while not (self._stopping.is_set() or self._stop_reason):
            try:
                for subscription in self._subscriptions:
                    self._tend(subscription)
            except _Interrupted:
                break
            listening = [s for s in self._subscriptions if s.connection is not None]
            timeout = min(s.next_deadline(self.probe_interval) for s in self._subscriptions)
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
            logger.warning(
                "Cannot listen on %s (%s); retrying in %.1f s.",
                subscription.description,
                self._redact(one_line(error)),
                delay,
            )
            return
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
        for model in subscription.models:
            self._flushers[model].request(catch_up=True)
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
        delay = subscription.schedule_retry()
        logger.warning(
            "Lost the LISTEN connection to %s (%s); reconnecting in %.1f s.",
            subscription.description,
            self._redact(one_line(error)),
            delay,
        )

    def _dispatch(self, payloads: Iterable[str]) -> None:
        """Wake the flusher of each model named by *payloads*, once per model."""
        woken: set[SignalModel] = set()
        for payload in payloads:
            model = self._tables.get(payload)
            if model is None:
                logger.warning(
                    "Ignoring a notification on channel %r for an unknown table: %s",
                    self.channel,
                    _shorten(payload),
                )
            elif model not in woken and model in self._flushers:
                woken.add(model)
                self._flushers[model].request()

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
        for flusher in self._flushers.values():
            flusher.join(deadline - time.monotonic())
        for flusher in self._flushers.values():
            if flusher.is_alive():
                logger.warning(
                    "%s is still sending; its burst will be rolled back.", flusher.model.__name__
                )
        for subscription in self._subscriptions:
            subscription.close()


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Interrupted(BaseException):
    """A stop signal arrived while the main thread was connecting."""


class _Flusher:
    """The thread flushing one model when its :class:`FlushSchedule` says so."""

    def __init__(
        self,
        signalbus: SignalBus,
        model: SignalModel,
        app: Any,
        stopping: threading.Event,
        schedule: FlushSchedule,
        redact: Redactor,
    ) -> None:
        self.signalbus = signalbus
        self.model = model
        self.app = app
        self._stopping = stopping
        self._schedule = schedule
        self._redact = redact
        self._requested = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"signalbus-{model.__name__}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread.ident is not None:
            self._thread.join(max(0.0, timeout))

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def request(self, *, catch_up: bool = False) -> None:
        """Ask for a flush; *catch_up* also cuts short a pending retry's backoff."""
        if catch_up:
            self._schedule.request_catch_up()
        self._requested.set()

    def _run(self) -> None:
        with self.app.app_context():
            while self._wait():
                self._flush()

    def _wait(self) -> bool:
        """Wait until a flush is due; return false when stopping."""
        while True:
            self._requested.wait(self._schedule.timeout())
            if self._stopping.is_set():
                return False
            self._requested.clear()
            if self._schedule.is_due():
                return True

    def _flush(self) -> None:
        try:
            self._flush_once()
        except Exception as error:
            self._failed(error)
        else:
            if self._schedule.failing:
                logger.info("Sending %s signals works again.", self.model.__name__)
            self._schedule.succeeded()

    def _flush_once(self) -> None:
        stop = self._stopping.is_set
        try:
            self.signalbus.flush_model(self.model, stop=stop)
        except DBAPIError as error:
            if not _is_connection_error(error):
                raise
            # Likely a pooled connection the server has closed: it is discarded
            # now, so one more try (at once) gets a fresh one unless the server is down.
            self.signalbus.flush_model(self.model, stop=stop)

    def _failed(self, error: Exception) -> None:
        delay = self._schedule.failed()
        # A send's traceback helps, once per failure streak.
        details = failure_details(error, with_traceback=self._schedule.failures == 1)
        logger.error(
            "Sending %s signals failed; its rows are kept, retrying in %.1f s%s",
            self.model.__name__,
            delay,
            self._redact(details),
        )


def _group_by_engine(
    engines: dict[SignalModel, Engine],
) -> dict[Engine, list[SignalModel]]:
    groups: dict[Engine, list[SignalModel]] = {}
    for model, engine in engines.items():
        groups.setdefault(engine, []).append(model)
    return groups


def _is_connection_error(error: DBAPIError) -> bool:
    return error.connection_invalidated or isinstance(error.orig, psycopg.OperationalError)


def _shorten(payload: str) -> str:
    """Quote an untrusted payload for a log line, cut to a few dozen characters."""
    if len(payload) <= _LOGGED_PAYLOAD_CHARS:
        return repr(payload)
    return f"{payload[:_LOGGED_PAYLOAD_CHARS]!r}... ({len(payload)} characters)"
