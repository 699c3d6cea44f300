"""The PostgreSQL side of the listener: LISTEN connections and waking the loop.

A :class:`Subscription` is one autocommit psycopg connection ``LISTEN``-ing on
the signal channel of one database: it connects, reads the payloads of the
notifications received, and probes a connection that has been silent (a
half-open connection fails the probe, whatever TCP thinks of it). A
:class:`WakePipe` lets another thread, or a signal handler, interrupt the
``select()`` that waits for those connections.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
import weakref

import psycopg
from psycopg import pq, sql
from sqlalchemy.engine import URL, Engine

from .backoff import Backoff
from .conninfo import connection_defaults, libpq_conninfo
from .model import SignalModel
from .redaction import redact_url

__all__ = ["APPLICATION_NAME", "Subscription", "WakePipe", "listen_conninfo"]

#: ``application_name`` of the LISTEN connections (as seen in ``pg_stat_activity``).
APPLICATION_NAME = "signalbus-listener"


def listen_conninfo(url: URL) -> str:
    """Return the libpq conninfo of a LISTEN connection to the database of *url*."""
    options = connection_defaults(url, application_name=APPLICATION_NAME, connect_timeout=5)
    return libpq_conninfo(url, **options)


class WakePipe:
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


class Subscription:
    """One LISTEN connection: to the database of *engine*, for the models stored there."""

    def __init__(
        self, engine: Engine, channel: str, models: list[SignalModel], max_backoff: float
    ) -> None:
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
