"""Describing errors for log lines and command-line messages."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

__all__ = ["one_line"]


def one_line(error: BaseException) -> str:
    """Describe *error* on one line; for a database error, the driver's message only.

    libpq's messages name the host and port, never the password.
    """
    if isinstance(error, DBAPIError) and error.orig is not None:
        error = error.orig
    return f"{type(error).__name__}: {' '.join(str(error).split())}"
