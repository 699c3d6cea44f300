"""The exceptions of signalbus, and describing errors for log lines and messages.

Every exception signalbus defines derives from :class:`SignalBusError`, and
also from the built-in exception callers caught before it existed
(``ValueError`` for bad settings, ``RuntimeError`` for a model that is not a
signal model), so that ``except ValueError`` keeps working.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

__all__ = [
    "ConfigurationError",
    "MissingSettingError",
    "NotASignalModelError",
    "SignalBusError",
    "one_line",
]


class SignalBusError(Exception):
    """The base of every exception signalbus raises on purpose."""


class ConfigurationError(SignalBusError, ValueError):
    """A setting has a value signalbus cannot work with; the message names the setting."""


class MissingSettingError(ConfigurationError, KeyError):
    """A setting that has no default is not set; the message names it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""  # KeyError would quote it


class NotASignalModelError(SignalBusError, RuntimeError):
    """A class was given where a signal model is needed, and is not one."""


def one_line(error: BaseException) -> str:
    """Describe *error* on one line; for a database error, the driver's message only.

    libpq's messages name the host and port, never the password.
    """
    if isinstance(error, DBAPIError) and error.orig is not None:
        error = error.orig
    return f"{type(error).__name__}: {' '.join(str(error).split())}"
