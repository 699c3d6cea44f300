"""The LISTEN loop: wake-ups, sweeps, reconnects, backoff and shutdown.

A :class:`Listener` keeps one autocommit psycopg connection per database
``LISTEN``-ing on the signal channel. The triggers notify that channel with
the name of the table that got rows; the listener maps the name to a signal
model and asks that model's *flusher* to flush it with
:meth:`SignalBus.flush_model`. Notifications are only hints (a lost one
costs latency, never a row): every model is also flushed once after each
(re)connect and then every ``sweep_interval`` seconds.

Each served model has its own flusher thread, so a model whose send fails or
hangs never delays the others. A failing model is retried with capped,
jittered exponential backoff; its rows stay in the table meanwhile.

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

The listener runs no SQL but ``LISTEN`` and its liveness probe; everything
else goes through the bus.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import pq, sql
from sqlalchemy.engine import URL, Engine
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
from .conninfo import connection_defaults, libpq_conninfo
from .errors import one_line
from .redaction import Redactor, redact_url

__all__ = ["APPLICATION_NAME", "Listener", "listen_conninfo", "listener_from_config"]

logger = logging.getLogger(__name__)

#: ``application_name`` of the LISTEN connections (as seen in ``pg_stat_activity``).
APPLICATION_NAME = "signalbus-listener"

#: Seconds at most between two retries of a failing model or connection.
MAX_BACKOFF = 30.0

#: Seconds a probe may take before the connection is deemed dead.
PROBE_TIMEOUT = 10.0

#: Seconds the flushers get to finish their burst on :meth:`Listener.stop`.
SHUTDOWN_GRACE = 1.5

_LOGGED_PAYLOAD_CHARS = 64


def listen_conninfo(url: URL) -> str:
    """Return the libpq conninfo of a LISTEN connection to the database of *url*."""
    options = connection_defaults(url, application_name=APPLICATION_NAME, connect_timeout=5)
    return libpq_conninfo(url, **options)


def listener_from_config(
    signalbus: SignalBus,
    config: Mapping[str, Any],
    models: Sequence[type] | None = None,
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
        models: Sequence[type] | None = None,
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
        self._wake_pipe = _WakePipe()
        self._stop_reason = ""
        self._connecting = False
        self._tables = signalbus.get_signal_tables()
        engines = {model: signalbus.engine_for(model) for model in served}
        self._redact = Redactor.for_urls(*(engine.url for engine in engines.values()))
        self._flushers = {
            model: _Flusher(
                signalbus, model, app, self._stopping, sweep_interval, max_backoff, self._redact
            )
            for model in served
        }
        self._subscriptions = [
            _Subscription(engine, channel, group, max_backoff)
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
            readable, _, _ = select.select(
                [self._wake_pipe, *listening], [], [], max(0.0, timeout - time.monotonic())
            )
            if self._wake_pipe in readable:
                self._wake_pipe.drain()
            for subscription in listening:
                if subscription in readable:
                    self._receive(subscription)
        if self._stop_reason:
            logger.info("Received %s; stopping.", self._stop_reason)

    def _tend(self, subscription: _Subscription) -> None:
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

    def _connect(self, subscription: _Subscription) -> None:
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

    def _receive(self, subscription: _Subscription) -> None:
        try:
            payloads = subscription.receive()
        except psycopg.Error as error:
            self._lost(subscription, error)
            return
        self._dispatch(payloads)

    def _lost(self, subscription: _Subscription, error: psycopg.Error) -> None:
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
        woken: set[type] = set()
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


class _WakePipe:
    """A self-pipe: :meth:`wake` makes a ``select()`` on it return.

    Open for its owner's lifetime, since a wake-up may come after the loop ended.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        weakref.finalize(self, _close_all, self._read, self._write)

    def fileno(self) -> int:
        return self._read

    def wake(self) -> None:
        """Async-signal-safe and thread-safe."""
        with contextlib.suppress(OSError):  # a full pipe: a wake-up is pending anyway
            os.write(self._write, b"\0")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 512):
                pass


def _close_all(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


class _Subscription:
    """One LISTEN connection: to the database of *engine*, for the models stored there."""

    def __init__(self, engine: Engine, channel: str, models: list[type], max_backoff: float):
        self.engine = engine
        self.conninfo = listen_conninfo(engine.url)
        self.description = redact_url(engine.url)
        self.channel = channel
        self.models = models
        self.connection: psycopg.Connection | None = None
        self.connections = 0
        self.retry_at = 0.0
        self.last_heard = 0.0
        self._backoff = Backoff(0.1, max_backoff)

    def fileno(self) -> int:
        assert self.connection is not None
        return self.connection.fileno()

    def connect(self) -> None:
        connection = psycopg.connect(self.conninfo, autocommit=True)
        try:
            connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except BaseException:
            connection.close()
            raise
        self.connection = connection
        self.connections += 1
        self.last_heard = time.monotonic()
        self._backoff.reset()

    def receive(self) -> list[str]:
        """Return the payloads of every notification already received, without waiting."""
        assert self.connection is not None
        pgconn = self.connection.pgconn
        pgconn.consume_input()  # raises if the connection is gone
        payloads = []
        while (notify := pgconn.notifies()) is not None:
            payloads.append(notify.extra.decode(self.connection.info.encoding, "replace"))
        self.last_heard = time.monotonic()
        return payloads

    def probe(self, timeout: float, wake_fd: int) -> None:
        """Check that the server answers ``SELECT 1`` within *timeout* seconds.

        A half-open connection fails here, whatever TCP thinks of it. Readable
        *wake_fd* (the listener is stopping) ends the wait early. Notifications
        received meanwhile stay queued for :meth:`receive`.
        """
        assert self.connection is not None
        pgconn = self.connection.pgconn
        deadline = time.monotonic() + timeout
        pgconn.send_query(b"SELECT 1")
        while pgconn.flush():
            if not _wait_for(pgconn.socket, wake_fd, deadline, write=True):
                return self._probe_failed(timeout, wake_fd)
        while True:
            if pgconn.is_busy():  # get_result() would block
                if not _wait_for(pgconn.socket, wake_fd, deadline):
                    return self._probe_failed(timeout, wake_fd)
                pgconn.consume_input()
            elif (result := pgconn.get_result()) is None:
                return None
            elif result.status != pq.ExecStatus.TUPLES_OK:
                message = result.error_message.decode(errors="replace").strip()
                raise psycopg.OperationalError(f"the probe failed: {message}")

    def _probe_failed(self, timeout: float, wake_fd: int) -> None:
        if _readable(wake_fd):
            return  # stopping: the connection is closed anyway
        raise psycopg.OperationalError(f"no answer to a probe within {timeout:g} s")

    def next_deadline(self, probe_interval: float) -> float:
        if self.connection is None:
            return self.retry_at
        return self.last_heard + probe_interval

    def schedule_retry(self) -> float:
        delay = self._backoff.next()
        self.retry_at = time.monotonic() + delay
        return delay

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


class _Flusher:
    """The thread flushing one model: on request, on its sweep schedule, or on retry."""

    def __init__(
        self,
        signalbus: SignalBus,
        model: type,
        app: Any,
        stopping: threading.Event,
        sweep_interval: float,
        max_backoff: float,
        redact: Callable[[str], str],
    ) -> None:
        self.signalbus = signalbus
        self.model = model
        self.app = app
        self.sweep_interval = sweep_interval
        self._stopping = stopping
        self._redact = redact
        self._requested = threading.Event()
        self._catch_up = False
        self._sweep_at = time.monotonic() + sweep_interval
        self._retry_at: float | None = None
        self._backoff = Backoff(0.5, max_backoff)
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
            self._catch_up = True
        self._requested.set()

    def _run(self) -> None:
        with self.app.app_context():
            while self._wait():
                self._flush()

    def _wait(self) -> bool:
        """Wait until a flush is due; return false when stopping."""
        while True:
            due = self._sweep_at if self._retry_at is None else self._retry_at
            self._requested.wait(max(0.0, due - time.monotonic()))
            if self._stopping.is_set():
                return False
            self._requested.clear()
            catch_up, self._catch_up = self._catch_up, False
            # While backing off, a request is answered by the retry itself.
            if catch_up or self._retry_at is None or time.monotonic() >= self._retry_at:
                return True

    def _flush(self) -> None:
        try:
            self._flush_once()
        except Exception as error:
            self._failed(error)
        else:
            if self._retry_at is not None:
                logger.info("Sending %s signals works again.", self.model.__name__)
            self._retry_at = None
            self._backoff.reset()
            self._sweep_at = time.monotonic() + self.sweep_interval

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
        delay = self._backoff.next()
        self._retry_at = time.monotonic() + delay
        # A send's traceback helps, once per failure streak; a database error's does not.
        if self._backoff.attempts == 1 and not isinstance(error, DBAPIError):
            details = ":\n" + "".join(traceback.format_exception(error)).rstrip()
        else:
            details = f": {one_line(error)}"
        logger.error(
            "Sending %s signals failed; its rows are kept, retrying in %.1f s%s",
            self.model.__name__,
            delay,
            self._redact(details),
        )


def _group_by_engine(engines: dict[type, Engine]) -> dict[Engine, list[type]]:
    groups: dict[Engine, list[type]] = {}
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


def _wait_for(fd: int, wake_fd: int, deadline: float, write: bool = False) -> bool:
    """Wait until *fd* is readable (writable); false on timeout or a readable *wake_fd*."""
    timeout = max(0.0, deadline - time.monotonic())
    if write:
        _, writable, _ = select.select([wake_fd], [fd], [], timeout)
        return bool(writable)
    readable, _, _ = select.select([fd, wake_fd], [], [], timeout)
    return fd in readable


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])
