"""What retrying cannot fix, found before the listener starts.

:func:`check_databases` connects once to each database of the models to
serve. A database that is not PostgreSQL, does not exist, or refuses the
credentials, and one without the trigger function, make it raise
:class:`StartupError`: a listener would retry for ever. An outdated trigger
function, or a missing quarantine table, is a warning. A server that cannot
be reached (refused, timed out, down) is not an error here: the listener
retries it, and says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import psycopg
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from .bus import SignalBus
from .errors import SignalBusError, one_line
from .model import SignalModel
from .quarantine import QUARANTINE_TABLE, has_quarantine
from .redaction import Redactor
from .triggers import function_is_current

__all__ = ["StartupError", "check_databases", "permanent_failure"]

logger = logging.getLogger("signalbus.listener")

#: What libpq says when the server refused the connection for good: (the text it
#: contains, what to tell the operator).
_PERMANENT_FAILURES = (
    ("does not exist", "check the database name, and the user name"),
    ("password authentication failed", "check the user name and password"),
    ("authentication failed", "check the user name and its authentication"),
    ("no pg_hba.conf entry", "the server's pg_hba.conf admits no such connection"),
    ("no password supplied", "give the password in the URL"),
)


class StartupError(SignalBusError):
    """The listener cannot start, and retrying would not help; the message says why."""


def check_databases(signalbus: SignalBus, models: Sequence[SignalModel]) -> None:
    """Raise :class:`StartupError` for a database of *models* that no retry would fix."""
    redact = signalbus.redactor()
    for engine in signalbus.models_by_engine(models):
        _check_database(engine, redact)


def permanent_failure(error: psycopg.Error) -> str | None:
    """What to do about a connection failure that retrying cannot fix; ``None`` for others."""
    message = str(error)
    return next((advice for text, advice in _PERMANENT_FAILURES if text in message), None)


def _check_database(engine: Engine, redact: Redactor) -> None:
    where = redact(engine.url.render_as_string(hide_password=True))
    if engine.dialect.name != "postgresql":
        raise StartupError(f"{where} is not a PostgreSQL database; signalbus needs PostgreSQL")
    try:
        with engine.connect() as connection:
            current = function_is_current(connection)
            quarantine = has_quarantine(connection)
    except DBAPIError as error:
        failure = error.orig
        advice = permanent_failure(failure) if isinstance(failure, psycopg.Error) else None
        if advice is None:
            return  # unreachable for now, or failing otherwise: the listener retries
        raise StartupError(
            f"Cannot connect to {where} ({redact(one_line(error))}): {advice}"
        ) from None
    if current is None:
        raise StartupError(
            f"The trigger function signalbus_notify() is missing in {where}"
            " (hint: flask db upgrade, or flask signalbus triggers --install)"
        )
    if not current:
        logger.warning(
            "The trigger function in %s is outdated: writers notify on every transaction"
            " (hint: flask db upgrade, or flask signalbus triggers --install).",
            where,
        )
    if not quarantine:
        logger.warning(
            "The quarantine table %s is missing in %s: a row whose send keeps failing"
            " holds the rows of its signal behind it (hint: flask db upgrade, or flask"
            " signalbus triggers --install).",
            QUARANTINE_TABLE,
            where,
        )
