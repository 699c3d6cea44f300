"""The exceptions of signalbus, and describing errors for log lines and messages.

The errors signalbus raises about its settings, signal models and publishing
(:class:`~signalbus.rabbitmq.PublishError`) derive from :class:`SignalBusError`,
and also from the built-in exception callers caught before it existed
(``ValueError`` for bad settings, ``RuntimeError`` for a model that is not a
signal model), so that ``except ValueError`` keeps working. Two stand apart:
:class:`~signalbus.DBSerializationError`, which ``@db.atomic`` retries on, and
the embedded server's ``EmbeddedPostgresError``.
"""

from __future__ import annotations

import threading
import traceback

from sqlalchemy.exc import DBAPIError

__all__ = [
    "ConfigurationError",
    "FailureDescriber",
    "MissingSettingError",
    "NotASignalModelError",
    "OutageError",
    "SignalBusError",
    "failure_details",
    "one_line",
]


class SignalBusError(Exception):
    """The base of the errors signalbus raises about its settings, signal models and publishing."""


class ConfigurationError(SignalBusError, ValueError):
    """A setting has a value signalbus cannot work with; the message names the setting."""


class MissingSettingError(ConfigurationError, KeyError):
    """A setting that has no default is not set; the message names it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""  # KeyError would quote it


class OutageError(SignalBusError):
    """A send failed because the service it sends to is unavailable, not because of its rows.

    Down, unreachable, stalled, or missing what it needs (a closed channel, a
    missing exchange). A send method may raise a subclass of its own: the
    listener then holds every model and probes the service about every second,
    instead of backing each model off.
    """


class NotASignalModelError(SignalBusError, RuntimeError):
    """A class was given where a signal model is needed, and is not one."""


def one_line(error: BaseException) -> str:
    """Describe *error* on one line; for a database error, the driver's message only.

    libpq's messages name the host and port, never the password.
    """
    if isinstance(error, DBAPIError) and error.orig is not None:
        error = error.orig
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def failure_details(error: BaseException, *, with_traceback: bool) -> str:
    """Describe *error* for the end of a log line: ``": <one line>"``.

    With *with_traceback*, a send's error gets its traceback instead
    (``":\n<traceback>"``); a database error never does: the driver's message
    says it all.
    """
    if with_traceback and not isinstance(error, DBAPIError):
        return ":\n" + "".join(traceback.format_exception(error)).rstrip()
    return f": {one_line(error)}"


class FailureDescriber:
    """Describes failures for log lines, each distinct error with its traceback once.

    An error is distinct by its type and message. Safe to share between threads;
    it remembers at most :attr:`MAX_REMEMBERED` errors, then starts afresh.
    """

    MAX_REMEMBERED = 1000

    def __init__(self) -> None:
        self._shown: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def __call__(self, error: BaseException) -> str:
        """Return :func:`failure_details` of *error*, with its traceback if it is new."""
        key = (type(error).__qualname__, str(error))
        with self._lock:
            new = key not in self._shown
            if new:
                if len(self._shown) >= self.MAX_REMEMBERED:
                    self._shown.clear()
                self._shown.add(key)
        return failure_details(error, with_traceback=new)
